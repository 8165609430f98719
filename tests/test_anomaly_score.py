"""The anomaly-detection CLI end to end: train on an npz of normals, score new rows.

    python main.py --config=configs/anomaly.py --workdir=W --config.data.name=npz --config.data.path=TRAIN.npz
    python main.py --config=configs/anomaly.py --workdir=W --mode=score \
        --config.score.input=IN.npz --config.score.output=OUT.npy

Training runs in-process through ``modes.run`` (what main.py calls); one bad input goes through
main.py itself to pin the exit status and the single ``error:`` line.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import anomaly as anomaly_config
from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import experiment, modes
from dxmi_jax.errors import ConfigError
from dxmi_jax.proj.anomaly import metrics, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 8


def _config(**score):
  c = anomaly_config.get_config("smoke")
  c.policy.net.hidden = (32, 32)
  c.value.hidden = (32, 32)
  c.energy.hidden = (32, 32)
  c.training.num_iters = 300
  c.training.batch_size = 64
  c.training.log_every = 100
  c.training.checkpoint_every = 300
  for k, v in score.items():
    c.score[k] = v
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("anomaly")
  x, y = synthetic.vectors(600, 100, D, seed=0, shift=1.0)  # a shift an untrained energy half misses
  # raw (unstandardised) scale and offset, so the stored transform matters
  x = x * np.linspace(0.5, 20.0, D, dtype=np.float32) + 100.0
  np.savez(root / "train.npz", X=x[:500])  # normals only
  np.savez(root / "test.npz", X=x[500:], y=y[500:])  # 100 normals, 100 anomalies
  c = _config()
  c.data.path = str(root / "train.npz")
  modes.run(c, str(root / "w"), "train")
  return root, x, y


def test_train_then_score_detects_planted_anomalies(trained):
  root, x, y = trained
  out = root / "scores.npy"
  modes.run(_config(input=str(root / "test.npz"), output=str(out)), str(root / "w"), "score")
  s = np.load(out)
  assert s.dtype == np.float32 and s.shape == (200,)
  trained_auroc = metrics.auroc(y[500:], s)
  # the same network with its initial (random) weights, on the same standardised rows
  c = _config()
  c.data.path = str(root / "train.npz")
  exp = experiment.build(c)
  untrained = np.asarray(exp.energy_fn(exp.init_state(jax.random.PRNGKey(0)))(exp.data.transform(x[500:])))
  untrained_auroc = metrics.auroc(y[500:], untrained)
  assert trained_auroc > 0.9 and trained_auroc > untrained_auroc + 0.1, (trained_auroc, untrained_auroc)
  # the standardisation fitted on the training file travels with the checkpoint
  meta = ckpt_lib.read_meta(str(root / "w"))
  np.testing.assert_allclose(meta["data_transform"]["mean"], x[:500].mean(0), rtol=1e-5)
  # row order: scoring a permutation permutes the scores
  perm = np.random.default_rng(0).permutation(200)
  np.savez(root / "perm.npz", X=x[500:][perm])
  modes.run(_config(input=str(root / "perm.npz"), output=str(root / "perm.npy")), str(root / "w"), "score")
  np.testing.assert_allclose(np.load(root / "perm.npy"), s[perm], rtol=1e-6)


@pytest.mark.parametrize("case", ["wrong_dim", "nan", "missing_key", "missing_file", "no_output"])
def test_score_bad_inputs_write_nothing(trained, case):
  root, x, _ = trained
  bad = root / f"{case}.npz"
  match = {
    "wrong_dim": "D=3",
    "nan": "NaN",
    "missing_key": "no array 'X'",
    "missing_file": "not found",
    "no_output": "config.score.output",
  }[case]
  if case == "wrong_dim":
    np.savez(bad, X=x[:5, :3])
  elif case == "nan":
    z = x[:5].copy()
    z[2, 1] = np.nan
    np.savez(bad, X=z)
  elif case == "missing_key":
    np.savez(bad, features=x[:5])
  out = root / f"{case}.npy"
  with pytest.raises(ConfigError, match=match) as err:
    modes.run(_config(input=str(bad), output="" if case == "no_output" else str(out)), str(root / "w"), "score")
  assert "config.score." in str(err.value)
  assert not out.exists()


def test_score_cli_error_line_and_exit_status(trained, tmp_path):
  root, x, _ = trained
  np.savez(tmp_path / "in.npz", X=x[:4, :5])
  out = tmp_path / "out.npy"
  r = subprocess.run(
    [
      sys.executable,
      "main.py",
      "--config=configs/anomaly.py",
      f"--workdir={root / 'w'}",
      "--mode=score",
      f"--config.score.input={tmp_path / 'in.npz'}",
      f"--config.score.output={out}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 2, r.stderr[-2000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "config.score.input" in errors[0] and "D=5" in errors[0], r.stderr[-2000:]
  assert not out.exists() and os.listdir(tmp_path) == ["in.npz"]


def test_train_data_errors(tmp_path):
  """A training file without X, or with NaN, stops before the workdir exists."""
  np.savez(tmp_path / "nox.npz", Y=np.zeros((10, 2)))
  np.savez(tmp_path / "nan.npz", X=np.full((10, 2), np.nan))
  for name, match in (("nox.npz", "no array 'X'"), ("nan.npz", "NaN"), ("absent.npz", "not found")):
    c = _config()
    c.data.path = str(tmp_path / name)
    with pytest.raises(ConfigError, match=match):
      modes.run(c, str(tmp_path / "w"), "train")
    assert not (tmp_path / "w").exists()
