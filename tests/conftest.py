"""Shared test setup: a persistent compilation cache, the golden-vector folder, and the helpers of
the training tests: the one tiny 2D config builder (``tiny_config``, keys with "__" for "."), CLI flags,
subprocess environment, metrics records, the faults' reference run, a tiny image experiment."""

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# The official code's outputs, committed with the tests (tests/golden/README.md, PROVENANCE.md).
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
REFERENCE = GOLDEN / "reference"

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))

import jax  # noqa: E402  (after the cache env var)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dxmi_jax import writers  # noqa: E402


def load_benchmark(name: str):
  """The module benchmarks/<name>.py (the benchmarks are scripts, not a package)."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def golden_path(name: str) -> pathlib.Path:
  p = GOLDEN / name
  if not p.exists():
    pytest.fail(f"golden file {p} is missing from the checkout (tests/golden/)")
  return p


@pytest.fixture
def golden():
  return golden_path


# The golden small configs (README A1, A2, A4).
SMALL = {
  "unet_small": ("ddpm_unet", dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)),
  "adm_cond": (
    "adm_unet",
    dict(
      image_size=32,
      model_channels=32,
      num_res_blocks=1,
      channel_mult=(1, 2, 2),
      attention_resolutions=(16, 8),
      num_head_channels=16,
      num_classes=10,
    ),
  ),
  "igebm": ("igebm", dict(nh=16)),
  "igebm_cond": ("igebm", dict(nh=16, n_class=10)),
}


# ------------------------------------------------- helpers of the training tests
#: the tiny 2D problem (configs/gaussians2d.py:scratch): keys are config paths with "__" for "."
TINY = dict(
  policy__net__hidden=(16, 16),
  value__hidden=(16, 16),
  training__batch_size=64,
  policy__num_steps=3,
  eval__num_samples=1000,
  eval__sw_projections=100,
  training__log_every=25,
  training__checkpoint_every=25,
)
#: on top of TINY, the 2D problem of test_dxmi and test_parallel: 32-wide MLPs, a larger evaluation,
#: and the config's own logging and checkpoint intervals (``tiny_config(**TINY_WIDE)``)
TINY_WIDE = dict(
  policy__net__hidden=(32, 32),
  value__hidden=(32, 32),
  eval__num_samples=2000,
  eval__sw_projections=200,
  training__log_every=100,
  training__checkpoint_every=1000,
)


def overrides(**over):
  """TINY plus keyword overrides, as config paths ("training__num_iters" -> "training.num_iters")."""
  out = {k.replace("__", "."): v for k, v in TINY.items()}
  out.update({k.replace("__", "."): v for k, v in over.items()})
  return out


def tiny_config(**over):
  """The one tiny config builder: configs/gaussians2d.py:scratch with ``overrides(**over)``
  (tiny_config(training__num_iters=10), tiny_config(**TINY_WIDE))."""
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # configs/ is a top-level folder of the checkout
  from configs import gaussians2d  # pylint: disable=import-outside-toplevel

  c = gaussians2d.get_config("scratch")
  for key, value in overrides(**over).items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


def cli_flags(**over):
  """The same overrides as main.py flags."""

  def fmt(v):
    if isinstance(v, tuple):
      return "(" + ",".join(str(x) for x in v) + ")"
    return str(v)

  return ["--config=configs/gaussians2d.py:scratch"] + [f"--config.{k}={fmt(v)}" for k, v in overrides(**over).items()]


def subprocess_env(**extra):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def main_cmd(workdir, *flags):
  return [sys.executable, str(REPO / "main.py"), f"--workdir={workdir}", *flags]


def records(workdir):
  return writers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


# ------------------------------------------------- the faults' reference run (test_checkpoint, test_preemption)
FAULT_RUN_ITERS = 1000
FAULT_RUN = dict(
  training__num_iters=FAULT_RUN_ITERS,
  training__log_every=50,
  training__checkpoint_every=250,
  training__eval_every=500,
  training__best_metric="sw",
  training__keep_checkpoints=3,
)


@pytest.fixture(scope="session")
def fault_reference(tmp_path_factory):
  """One uninterrupted in-process run of ``tiny_config(**FAULT_RUN)``: runs that met a fault and were
  started again must end bitwise equal to it.  Tests copy it; nothing writes into it."""
  from dxmi_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from dxmi_jax import modes  # pylint: disable=import-outside-toplevel

  wd = tmp_path_factory.mktemp("fault_reference")
  modes.run(tiny_config(**FAULT_RUN), str(wd))
  assert ckpt_lib.committed_steps(str(wd)) == [500, 750, 1000]
  return wd


def assert_same_final_state(a_dir, b_dir):
  """The newest checkpoints of two FAULT_RUN workdirs are at the last step and bitwise equal."""
  from dxmi_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel

  a, ma = ckpt_lib.load_raw(str(a_dir))
  b, mb = ckpt_lib.load_raw(str(b_dir))
  assert ma["step"] == mb["step"] == FAULT_RUN_ITERS
  flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def assert_same_records(a_dir, b_dir):
  """metrics.jsonl of two workdirs equal record for record (``perf/`` fields aside)."""
  ra, rb = records(a_dir), records(b_dir)
  assert [(r["step"], r["kind"]) for r in ra] == [(r["step"], r["kind"]) for r in rb]
  for x, y in zip(ra, rb):
    assert writers.comparable(x) == writers.comparable(y), (x["step"], x["kind"])


def assert_logs_whole(wd):
  """metrics.jsonl ends with a complete line; every TensorBoard event file ends with a complete record."""
  text = (wd / "metrics.jsonl").read_text()
  assert text.endswith("\n")
  assert len(records(wd)) == len([l for l in text.splitlines() if l.strip()])
  for path in (wd / "tensorboard").glob("events.out.tfevents.*"):
    assert writers._complete_length(str(path)) == path.stat().st_size, path  # pylint: disable=protected-access


# ------------------------------------------------- the golden DxMI iterations' toy MLPs
def golden_mlp_params(g, prefix, n_layers):
  """torch mlp.{0,2,4}.{weight,bias} -> TimeMLP dense_{0,1,2}.{kernel,bias}."""
  return {
    f"dense_{i}": {
      "kernel": jnp.asarray(g[f"{prefix}/mlp.{2 * i}.weight"].T),
      "bias": jnp.asarray(g[f"{prefix}/mlp.{2 * i}.bias"]),
    }
    for i in range(n_layers)
  }


def torch_mlp_names(flax_params, n_layers=3):
  """TimeMLP dense_{i}.{kernel,bias} -> torch mlp.{2i}.{weight,bias} (for comparing with the golden files)."""
  out = {}
  for i in range(n_layers):
    out[f"mlp.{2 * i}.weight"] = np.asarray(flax_params[f"dense_{i}"]["kernel"]).T
    out[f"mlp.{2 * i}.bias"] = np.asarray(flax_params[f"dense_{i}"]["bias"])
  return out


# ------------------------------------------------- fake-device subprocesses
def run_with_fake_devices(script: str, n: int, timeout: int):
  """Runs ``script`` in a fresh Python with ``n`` fake CPU devices; returns its last RESULT{json} line."""
  import json  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel

  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT") :])


def anomaly_config_on(tmp_path, variant="smoke", rows=100, dim=6):
  """configs/anomaly.py:<variant> training on a synthetic (rows, dim) npz of normals in tmp_path."""
  from configs import anomaly as anomaly_config  # pylint: disable=import-outside-toplevel
  from dxmi_jax.proj.anomaly import synthetic  # pylint: disable=import-outside-toplevel

  x, _ = synthetic.vectors(rows, 0, dim, seed=0)
  np.savez(tmp_path / "t.npz", X=x)
  c = anomaly_config.get_config(variant)
  c.data.path = str(tmp_path / "t.npz")
  return c


def tiny_image_experiment():
  """configs/cifar10.py:smoke shrunk to 8x8 images, T=2 and a one-level UNet: an image experiment that
  compiles quickly."""
  from configs import cifar10  # pylint: disable=import-outside-toplevel
  from dxmi_jax import experiment  # pylint: disable=import-outside-toplevel

  c = cifar10.get_config("smoke")
  c.policy.num_steps = 2
  c.data.image_size = c.policy.net.resolution = 8  # a tiny UNet of the same family: a quick compile
  c.policy.net.ch_mult, c.policy.net.attn_resolutions = (1,), (8,)
  return experiment.build(c)
