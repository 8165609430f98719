"""Bad input: one clear error naming the option, before anything is compiled or written.

Most cases go through ``modes.run`` in-process (ConfigError, and the workdir must
not exist afterwards); a few go through main.py, where the CLI behaviour (one
``error:`` line on stderr, exit status 2) is the point.  The CLI cases run as
parallel subprocesses that fail before any compilation.
"""

import subprocess

import jax
import numpy as np
import pytest

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import experiment, modes
from dxmi_jax.errors import ConfigError
from conftest import REPO, cli_flags, main_cmd, subprocess_env, tiny_config


def _fails(tmp_path, config, match, mode="train", workdir=None):
  wd = workdir or tmp_path / "wd"
  with pytest.raises(ConfigError, match=match):
    modes.run(config, str(wd), mode)
  return wd


def _npy(tmp_path, name, array=None, raw=None):
  path = tmp_path / name
  if raw is not None:
    path.write_bytes(raw)
  else:
    np.save(path, array)
  return str(path)


CASES = {
  "unknown dataset": (dict(data__name="moons"), r"config\.data\.name: unknown dataset 'moons'"),
  "T < 1": (dict(policy__num_steps=0), r"config\.policy\.num_steps \(T\) must be an integer >= 1, got 0"),
  "npy without path": (dict(data__name="npy"), r"config\.data\.path: required"),
  "npy missing": (
    dict(data__name="npy", data__path="/nonexistent/points.npy"),
    r"config\.data\.path: file not found: /nonexistent/points\.npy",
  ),
  "pretrained policy missing": (
    dict(init__policy_checkpoint="/nonexistent/ckpt"),
    r"config\.init\.policy_checkpoint: /nonexistent/ckpt does not exist",
  ),
  "log_every 0": (dict(training__log_every=0), r"config\.training\.log_every must be >= 1, got 0"),
  "keep 0": (dict(training__keep_checkpoints=0), r"config\.training\.keep_checkpoints must be >= 1"),
  "best metric unknown": (
    dict(training__best_metric="fid"),
    r"config\.training\.best_metric: 'fid' is not an evaluation metric",
  ),
  "best metric malformed": (dict(training__best_metric="up:sw"), r"config\.training\.best_metric: expected"),
  "negative iterations": (dict(training__num_iters=-5), r"config\.training\.num_iters must be >= 0"),
  "checkpoint_every 0": (dict(training__checkpoint_every=0), r"config\.training\.checkpoint_every must be >= 1"),
  "policy lr nan": (dict(optim__policy_lr=float("nan")), r"config\.optim\.policy_lr must be a finite number"),
  "value lr inf": (dict(optim__value_lr=float("inf")), r"config\.optim\.value_lr must be a finite number"),
  "sigma lr negative": (dict(optim__policy_sigma_lr=-1e-3), r"config\.optim\.policy_sigma_lr must be >= 0"),
  "tau1 negative": (dict(dxmi__tau1=-1.0), r"config\.dxmi\.tau1 must be >= 0, got -1"),
  "tau2 nan": (dict(dxmi__tau2=float("nan")), r"config\.dxmi\.tau2 must be a finite number"),
  "gamma negative": (dict(dxmi__gamma=-0.5), r"config\.dxmi\.gamma must be >= 0"),
  "clip nan": (dict(optim__policy_grad_clip=float("nan")), r"config\.optim\.policy_grad_clip must be a finite"),
  "avr 1": (dict(dxmi__adavelreg=1.0), r"config\.dxmi\.adavelreg must be < 1"),
  "avr nan": (dict(dxmi__adavelreg=float("nan")), r"config\.dxmi\.adavelreg must be a finite number"),
  "adam b2 1": (dict(optim__b2=1.0), r"config\.optim\.b2 must be >= 0 and < 1"),
  "adam eps 0": (dict(optim__eps=0.0), r"config\.optim\.eps must be > 0"),
  "grad chunks 0": (dict(perf__policy_grad_chunks=0), r"config\.perf\.policy_grad_chunks must be an integer >= 1"),
  "grad chunks not dividing": (
    dict(perf__policy_grad_chunks=3),
    r"config\.perf\.policy_grad_chunks .* batch_size=64 divisible by it times the number of devices \(1\), got 3",
  ),
  "grad chunk rows negative": (
    dict(perf__policy_grad_chunk_rows=-1),
    r"config\.perf\.policy_grad_chunk_rows must be an integer >= 0 \(0: off\), got -1",
  ),
  "grad chunk rows and chunks": (
    dict(perf__policy_grad_chunk_rows=4, perf__policy_grad_chunks=2),
    r"config\.perf\.policy_grad_chunk_rows=4 and config\.perf\.policy_grad_chunks=2: set one of them",
  ),
  "grad chunk rows not dividing": (
    dict(perf__policy_grad_chunk_rows=5),
    r"config\.perf\.policy_grad_chunk_rows=5 must divide each device's share of the batch \(batch_size=64",
  ),
  "cpu dots unknown": (
    dict(perf__cpu_dots="mkl"),
    r"config\.perf\.cpu_dots: expected one of \('auto', 'eigen', 'ynnpack'\)",
  ),
  "split of 2D data": (dict(data__split="val"), r"config\.data\.split='val': only .* have other splits"),
  "digits evaluator on 2D data": (
    dict(eval__evaluators="digits"),
    r"config\.eval\.evaluators: 'digits' needs config\.data\.name=digits",
  ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_fails_before_writing(tmp_path, case):
  over, match = CASES[case]
  wd = _fails(tmp_path, tiny_config(**over), match)
  assert not wd.exists()


@pytest.mark.parametrize(
  "kind,match",
  [
    ("junk", r"config\.data\.path: .*junk\.npy is not a readable \.npy file"),
    ("1d", r"config\.data\.path: .*1d\.npy must hold an \(N, D\) array with N >= 2, got shape \(10,\)"),
    ("nan", r"config\.data\.path: .*nan\.npy contains NaN or Inf"),
    ("strings", r"config\.data\.path: .*strings\.npy must hold numbers"),
  ],
)
def test_malformed_npy(tmp_path, kind, match):
  path = {
    "junk": lambda: _npy(tmp_path, "junk.npy", raw=b"not a numpy file"),
    "1d": lambda: _npy(tmp_path, "1d.npy", np.zeros(10)),
    "nan": lambda: _npy(tmp_path, "nan.npy", np.array([[0.0, np.nan], [1.0, 2.0]])),
    "strings": lambda: _npy(tmp_path, "strings.npy", np.array([["a", "b"], ["c", "d"]])),
  }[kind]()
  wd = _fails(tmp_path, tiny_config(data__name="npy", data__path=path), match)
  assert not wd.exists()


def test_unknown_mode_and_missing_workdir(tmp_path):
  _fails(tmp_path, tiny_config(), r"--mode: expected one of .*'train'.*got 'fit'", mode="fit")
  with pytest.raises(ConfigError, match="--workdir: required"):
    modes.run(tiny_config(), "", "train")
  assert not (tmp_path / "wd").exists()
  afile = tmp_path / "file"
  afile.write_text("x")
  _fails(tmp_path, tiny_config(), r"--workdir: .*file exists and is not a directory", workdir=afile)


@pytest.mark.parametrize("mode", ["sample", "eval"])
def test_sample_and_eval_need_a_checkpoint(tmp_path, mode):
  wd = _fails(tmp_path, tiny_config(), rf"--workdir: no checkpoint under .*checkpoints to {mode} from", mode=mode)
  assert not wd.exists()


def test_batch_not_divisible_by_devices_or_processes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda *a: 3)
  wd = _fails(
    tmp_path,
    tiny_config(),
    r"config\.training\.batch_size=64 is not divisible by the number of "
    r"devices \(3\)",
  )
  assert not wd.exists()
  monkeypatch.setattr(jax, "device_count", lambda *a: 1)
  monkeypatch.setattr(jax, "process_count", lambda *a: 3)
  wd = _fails(
    tmp_path,
    tiny_config(),
    r"config\.training\.batch_size=64 is not divisible by the number of "
    r"processes \(3\)",
  )
  assert not wd.exists()


@pytest.mark.parametrize(
  "env,match",
  [
    (
      {"DXMI_COORDINATOR": "localhost:1234", "DXMI_NUM_PROCESSES": "two", "DXMI_PROCESS_ID": "0"},
      r"DXMI_NUM_PROCESSES: expected an integer when DXMI_COORDINATOR is set, got 'two'",
    ),
    ({"DXMI_COORDINATOR": "localhost:1234", "DXMI_NUM_PROCESSES": "2"}, r"DXMI_PROCESS_ID: expected an integer"),
    (
      {"DXMI_COORDINATOR": "localhost:1234", "DXMI_NUM_PROCESSES": "2", "DXMI_PROCESS_ID": "2"},
      r"DXMI_PROCESS_ID=2 / DXMI_NUM_PROCESSES=2: expected 0 <= id < num_processes",
    ),
    (
      {"DXMI_COORDINATOR": "nohostport", "DXMI_NUM_PROCESSES": "2", "DXMI_PROCESS_ID": "0"},
      r"DXMI_COORDINATOR: expected host:port",
    ),
  ],
)
def test_malformed_distributed_environment(tmp_path, monkeypatch, env, match):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  wd = _fails(tmp_path, tiny_config(), match)
  assert not wd.exists()


def test_pretrained_weights_that_do_not_fit_the_architecture(tmp_path):
  # a params checkpoint of an 8-wide policy, loaded into the 16-wide config
  small = experiment.build(tiny_config(policy__net__hidden=(8, 8)))
  net = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), small.abstract_state().policy.params["net"])
  ckpt_lib.save_params(str(tmp_path / "pre"), {"net": net}, {"kind": "test"})
  wd = _fails(
    tmp_path,
    tiny_config(init__policy_checkpoint=str(tmp_path / "pre")),
    r"config\.init\.policy_checkpoint does not fit the configured architecture: mis-shaped "
    r"\['dense_0'\]\['bias'\]: checkpoint \(8,\) vs config \(16,\)",
  )
  assert not wd.exists()


def test_resuming_a_checkpoint_of_another_architecture(tmp_path):
  wd = tmp_path / "wd"
  exp = experiment.build(tiny_config())
  ck = ckpt_lib.Checkpointer(str(wd), async_save=False)
  ck.save(7, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), exp.abstract_state()))
  ck.close()
  before = sorted(p.relative_to(wd) for p in wd.rglob("*"))
  _fails(
    tmp_path,
    tiny_config(policy__num_steps=4),
    r"--workdir: the checkpoint in .*checkpoints does not fit the configured architecture "
    r"\(mis-shaped policy/params/log_sigma: checkpoint \(3,\) float32 vs config \(4,\) float32",
    workdir=wd,
  )
  _fails(tmp_path, tiny_config(value__hidden=(8, 8)), r"value/params/dense_0/bias", workdir=wd, mode="eval")
  assert sorted(p.relative_to(wd) for p in wd.rglob("*")) == before  # nothing added or removed


# ------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path):
  cases = {
    "unknown_key": (
      ["--config.training.batch_sze=3"],
      "error: --config.training.batch_sze: no such config option (did you mean 'batch_size'?); the config is locked",
    ),
    "wrong_type": (
      ["--config.training.batch_size=abc"],
      "error: flag --config.training.batch_size=abc: invalid literal for int()",
    ),
    "no_devices_split": (
      ["--config.training.batch_size=63"],
      "error: config.training.batch_size=63 is not divisible by the number of devices (2)",
    ),
    "policy_lr_nan": (
      ["--config.optim.policy_lr=nan"],
      "error: config.optim.policy_lr must be a finite number, got nan",
    ),
    "tau1_negative": (["--config.dxmi.tau1=-1"], "error: config.dxmi.tau1 must be >= 0, got -1"),
  }
  procs = {}
  for name, (extra, _) in cases.items():
    env = (
      subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
      if name == "no_devices_split"
      else subprocess_env()
    )
    procs[name] = subprocess.Popen(
      main_cmd(tmp_path / name, *cli_flags(), *extra),
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
  cases["missing_config"] = (
    [],
    "error: --config: cannot load the config file: [Errno 2] No such file or directory: 'configs/nope.py'",
  )
  procs["missing_config"] = subprocess.Popen(
    main_cmd(tmp_path / "missing_config", "--config=configs/nope.py"),
    cwd=REPO,
    env=subprocess_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  for name, p in procs.items():
    out, err = p.communicate(timeout=240)
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert p.returncode == 2, (name, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith(cases[name][1]), (name, err[-2000:])
    assert "Traceback" not in err and not out, name
    assert not (tmp_path / name).exists(), name


def test_sample_mode_checks_the_sample_count(tmp_path):
  wd = tmp_path / "wd"
  modes.run(tiny_config(training__num_iters=2, training__checkpoint_every=2), str(wd), "train")
  before = sorted(p.name for p in wd.iterdir())
  _fails(tmp_path, tiny_config(sample__num=0), r"config\.sample\.num must be >= 1, got 0", mode="sample", workdir=wd)
  assert sorted(p.name for p in wd.iterdir()) == before  # nothing written
