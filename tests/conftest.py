"""Shared test setup: a persistent compilation cache, the golden-vector folder, and the helpers of
the training tests (tiny 2D config, CLI flags, subprocess environment, metrics records)."""

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
TINY = {
  "policy.net.hidden": (16, 16),
  "value.hidden": (16, 16),
  "training.batch_size": 64,
  "policy.num_steps": 3,
  "eval.num_samples": 1000,
  "eval.sw_projections": 100,
  "training.log_every": 25,
  "training.checkpoint_every": 25,
}


def overrides(**over):
  """TINY plus keyword overrides written with "__" for "." (training__num_iters=10)."""
  out = dict(TINY)
  out.update({k.replace("__", "."): v for k, v in over.items()})
  return out


def tiny_config(**over):
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


# ------------------------------------------------- 2D problem and fake-device subprocesses
TINY_2D_T, TINY_2D_B = 3, 64


def tiny_2d_config(**over):
  """The 2D problem of test_dxmi and test_parallel (32-wide MLPs, T=3, B=64); keys with dots."""
  from configs import gaussians2d  # pylint: disable=import-outside-toplevel

  c = gaussians2d.get_config("scratch")
  c.policy.num_steps = TINY_2D_T
  c.training.batch_size = TINY_2D_B
  c.policy.net.hidden = (32, 32)
  c.value.hidden = (32, 32)
  c.eval.num_samples = 2000
  c.eval.sw_projections = 200
  for k, v in over.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


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
