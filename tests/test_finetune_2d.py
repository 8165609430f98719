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


def test_pretrain_first_contradicts_a_policy_checkpoint(tmp_path):
  with pytest.raises(ConfigError, match="config.init.pretrain_first"):
    modes.run(finetune_config(init__policy_checkpoint=str(tmp_path)), str(tmp_path / "wd"), "train")
  assert not (tmp_path / "wd").exists()
