"""Workdirs written by an older dxmi-jax still resume, sample and score (tests/data/old_workdirs/README.md).

Each committed workdir is copied into tmp_path and driven through main.py as a user would: the 2D
one (the README's first command, tiny) samples from its step-10 checkpoint and then resumes DxMI
to step 14; the anomaly one (configs/anomaly.py:smoke) scores new rows.
"""

import shutil
import subprocess

import numpy as np

from conftest import REPO, main_cmd, records, subprocess_env

OLD = REPO / "tests" / "data" / "old_workdirs"
# the architecture and sizes the 2D workdir was written with (its README's command)
FLAGS_2D = [
  "--config=configs/gaussians2d.py",
  "--config.policy.num_steps=3",
  "--config.policy.net.hidden=(16,16)",
  "--config.value.hidden=(16,16)",
  "--config.training.batch_size=64",
  "--config.training.log_every=5",
  "--config.training.checkpoint_every=10",
  "--config.eval.num_samples=500",
  "--config.eval.sw_projections=50",
  "--config.eval.sw_draws=2",
  "--config.sample.batch_size=100",
]
STORED_STEP_2D = 10


def _main(workdir, *flags):
  res = subprocess.run(
    main_cmd(workdir, *flags), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert "Traceback" not in res.stderr, res.stderr[-3000:]
  return res


def test_old_2d_workdir_samples_and_resumes(tmp_path):
  wd = tmp_path / "gaussians2d"
  shutil.copytree(OLD / "gaussians2d", wd)
  before = records(wd)
  assert max(r["step"] for r in before) == STORED_STEP_2D

  _main(wd, *FLAGS_2D, "--mode=sample", "--config.sample.num=200")
  with np.load(wd / "samples.npz") as z:
    x = z["arr_0"]
  assert x.shape == (200, 2) and x.dtype == np.float32 and np.all(np.isfinite(x))

  res = _main(wd, *FLAGS_2D, "--mode=train", "--config.training.num_iters=14")
  assert f"resuming from step {STORED_STEP_2D}" in res.stderr, res.stderr[-3000:]
  assert "pretraining a DDPM" not in res.stdout  # the stored pretrain/ and checkpoint are reused
  new = records(wd)[len(before) :]
  steps = [r["step"] for r in new]
  assert steps and min(steps) > STORED_STEP_2D and max(steps) == 14, steps
  final = [r for r in new if "sw" in r]
  assert final and all(np.isfinite(r["sw"]) and np.isfinite(r["auc"]) for r in final), final
  assert (wd / "checkpoints" / "14").is_dir()


def test_old_anomaly_workdir_scores(tmp_path):
  from dxmi_jax.proj.anomaly import synthetic  # pylint: disable=import-outside-toplevel

  wd = tmp_path / "anomaly"
  shutil.copytree(OLD / "anomaly", wd)
  x, _ = synthetic.vectors(20, 5, 6, seed=1)
  np.savez(tmp_path / "in.npz", X=x)
  out = tmp_path / "scores.npy"
  _main(
    wd,
    "--config=configs/anomaly.py:smoke",
    "--mode=score",
    f"--config.score.input={tmp_path / 'in.npz'}",
    f"--config.score.output={out}",
  )
  s = np.load(out)
  assert s.shape == (25,) and np.all(np.isfinite(s)), s
