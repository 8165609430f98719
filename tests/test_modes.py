"""The default 2D job: pretrain a DDPM (or reuse it), evaluate it at step 0, fine-tune with DxMI."""

import os

import pytest

from dxmi_jax import modes, writers
from dxmi_jax.errors import ConfigError


def finetune_config(**over):
  from configs import gaussians2d  # pylint: disable=import-outside-toplevel

  c = gaussians2d.get_config()  # the README's first command: pretrain_first, eval_at_start
  c.policy.num_steps = 3
  c.policy.net.hidden, c.value.hidden = (16, 16), (16, 16)
  c.training.batch_size, c.pretrain.batch_size = 64, 64
  c.training.num_iters, c.pretrain.num_iters, c.pretrain.warmup = 20, 30, 5
  c.training.log_every = c.training.checkpoint_every = 20
  c.eval.num_samples, c.eval.sw_projections, c.eval.sw_draws = 500, 50, 3
  for key, value in over.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def test_pretrains_evaluates_at_start_and_prints_before_after(tmp_path, capsys):
  wd = tmp_path / "wd"
  final = modes.run(finetune_config(), str(wd), "train")
  out = capsys.readouterr().out
  assert (wd / "pretrain" / "meta.json").exists()
  evals = [r for r in writers.read_jsonl(str(wd / "metrics.jsonl")) if r["kind"] == "eval"]
  assert [r["step"] for r in evals] == [0, 20]
  for r in evals:
    assert r["sw_std"] >= 0 and r["sw_floor"] > 0 and r["sw_floor_std"] > 0 and 0.5 < r["auc_ideal"] <= 1
  assert final["sw"] == evals[-1]["sw"]
  assert "DDPM T=3 (pretrained, step 0)" in out and "DxMI T=3 (step 20)" in out and "floor, 3 draws" in out
  assert (wd / "figure.png").stat().st_size > 1000


def test_reuses_a_pretrained_ddpm_in_the_workdir(tmp_path, capsys):
  wd = tmp_path / "wd"
  c = finetune_config()
  modes.run(c, str(wd), "pretrain")
  meta = wd / "pretrain" / "meta.json"
  before = os.stat(meta).st_mtime_ns
  modes.run(finetune_config(training__eval_at_start=False), str(wd), "train")
  assert os.stat(meta).st_mtime_ns == before
  assert "pretraining a DDPM" not in capsys.readouterr().out


def test_readme_two_step_workflow_on_the_default_config(tmp_path, capsys):
  """docs/gaussians2d.md: --mode=pretrain, then train with --config.init.policy_checkpoint on the
  default config (pretrain_first="auto"): DxMI starts from that DDPM and pretrains nothing."""
  ddpm, wd = tmp_path / "ddpm", tmp_path / "dxmi"
  modes.run(finetune_config(), str(ddpm), "pretrain")
  capsys.readouterr()
  modes.run(finetune_config(init__policy_checkpoint=str(ddpm)), str(wd), "train")
  out = capsys.readouterr().out
  assert not (wd / "pretrain").exists() and "pretraining a DDPM" not in out
  assert "DDPM T=3 (pretrained, step 0)" in out
  # Started from that DDPM: the step-0 evaluation equals one of a run that reuses it in its workdir.
  reuse = tmp_path / "reuse"
  (reuse / "pretrain").parent.mkdir()
  os.symlink(ddpm / "pretrain", reuse / "pretrain")
  modes.run(finetune_config(), str(reuse), "train")
  step0 = lambda d: next(r for r in writers.read_jsonl(str(d / "metrics.jsonl")) if r["kind"] == "eval")
  assert step0(wd)["step"] == 0 and step0(wd)["sw"] == step0(reuse)["sw"]


@pytest.mark.parametrize("old", [True, False])
def test_boolean_values_still_work(tmp_path, old):
  wd = tmp_path / "wd"
  modes.run(finetune_config(init__pretrain_first=old, training__eval_at_start=False), str(wd), "train")
  assert (wd / "pretrain" / "meta.json").exists() == old
  assert (wd / "checkpoints").exists()


def test_explicit_true_contradicts_a_policy_checkpoint(tmp_path):
  c = finetune_config(init__policy_checkpoint=str(tmp_path), init__pretrain_first=True)
  with pytest.raises(ConfigError, match="config.init.pretrain_first: True together with"):
    modes.run(c, str(tmp_path / "wd"), "train")
  assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize("bad", ["yes", 1, "True"])
def test_other_values_are_rejected(tmp_path, bad):
  with pytest.raises(ConfigError, match="config.init.pretrain_first: expected True, False or 'auto'"):
    modes.run(finetune_config(init__pretrain_first=bad), str(tmp_path / "wd"), "train")
  assert not (tmp_path / "wd").exists()


def test_command_line_values(tmp_path):
  """--config.init.pretrain_first=auto|True|false parse to "auto" / True / False."""
  import subprocess
  import sys

  from conftest import REPO

  code = (
    "from absl import app, flags\n"
    "from ml_collections import config_flags\n"
    "c = config_flags.DEFINE_config_file('config')\n"
    "app.run(lambda _: print(repr(c.value.init.pretrain_first)))\n"
  )
  seen = []
  for arg in ("auto", "True", "false"):
    out = subprocess.run(
      [sys.executable, "-c", code, "--config=configs/gaussians2d.py", f"--config.init.pretrain_first={arg}"],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
    )
    seen.append(out.stdout.strip())
  assert seen == ["'auto'", "True", "False"]
