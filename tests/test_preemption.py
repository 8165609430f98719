"""preemption.py: SIGTERM during training, an evaluation, compilation or pretraining saves (or keeps the
last checkpoint), exits 143, and the restart ends bitwise equal to conftest's ``fault_reference`` run
(docs/faults.md)."""

import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import modes, preemption, train, writers
from conftest import (
  FAULT_RUN,
  FAULT_RUN_ITERS,
  REPO,
  assert_logs_whole,
  assert_same_final_state,
  assert_same_records,
  cli_flags,
  main_cmd,
  records,
  subprocess_env,
  tiny_config,
)


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_the_restart_is_exact(fault_reference, tmp_path):
  wd = tmp_path / "wd"
  flags = cli_flags(**FAULT_RUN)
  proc = subprocess.Popen(
    main_cmd(wd, *flags), cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  err = []
  for line in proc.stderr:  # SIGTERM once training is under way
    err.append(line)
    if f"step 100/{FAULT_RUN_ITERS}" in line:
      proc.send_signal(signal.SIGTERM)
      break
  err.append(proc.communicate(timeout=120)[1])
  err = "".join(err)
  assert proc.returncode == preemption.EXIT_STATUS, err[-3000:]
  stopped = ckpt_lib.latest_step(str(wd))
  assert 100 <= stopped < FAULT_RUN_ITERS, (stopped, err[-2000:])  # saved where it stopped
  assert f"preempted: saved checkpoint {stopped} in {wd / 'checkpoints'}" in err and "Traceback" not in err
  assert [r["step"] for r in records(wd)][-1] <= stopped
  assert_logs_whole(wd)
  res = subprocess.run(
    main_cmd(wd, *flags), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert f"resuming from step {stopped}" in res.stderr
  assert_same_final_state(fault_reference, wd)
  assert_same_records(fault_reference, wd)


def _sigterm_self():
  os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_an_evaluation_drops_it_and_the_restart_does_it(fault_reference, tmp_path, monkeypatch):
  wd = tmp_path / "wd"
  real_evaluate = train.evaluate

  def evaluate(exp, evals, state, workdir, step, writer, final):
    if step == 500:
      _sigterm_self()  # arrives mid-evaluation: the handler raises inside it
      time.sleep(5)  # (not reached)
    return real_evaluate(exp, evals, state, workdir, step, writer, final)

  monkeypatch.setattr(train, "evaluate", evaluate)
  with pytest.raises(preemption.Preempted, match="saved checkpoint 500"):
    modes.run(tiny_config(**FAULT_RUN), str(wd))
  assert ckpt_lib.read_meta(str(wd))["eval_pending"] is True
  assert not [r for r in records(wd) if r["kind"] == "eval"]  # dropped: no record of it
  monkeypatch.setattr(train, "evaluate", real_evaluate)
  modes.run(tiny_config(**FAULT_RUN), str(wd))
  assert_same_final_state(fault_reference, wd)
  assert_same_records(fault_reference, wd)  # the evaluation of step 500 was done on restart
  assert ckpt_lib.committed_steps(str(wd), best=True) == ckpt_lib.committed_steps(str(fault_reference), best=True)


def test_sigterm_during_compilation_ends_without_training(fault_reference, tmp_path, monkeypatch):
  wd = shutil.copytree(fault_reference, tmp_path / "wd")
  shutil.rmtree(wd / "checkpoints" / "1000")
  before = ckpt_lib.committed_steps(str(wd))
  real_compile = train.compile_train_step

  def compile_train_step(exp, mesh):
    _sigterm_self()
    return real_compile(exp, mesh)

  monkeypatch.setattr(train, "compile_train_step", compile_train_step)
  with pytest.raises(preemption.Preempted, match="preempted before training; the checkpoint of step 750 stands"):
    modes.run(tiny_config(**FAULT_RUN), str(wd))
  assert ckpt_lib.committed_steps(str(wd)) == before
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run


def test_sigterm_during_pretraining_saves_it_and_the_restart_is_exact(tmp_path, monkeypatch):
  over = dict(FAULT_RUN, pretrain__num_iters=60, pretrain__batch_size=64, training__log_every=10)
  modes.run(tiny_config(**over), str(tmp_path / "ref"), mode="pretrain")
  wd = tmp_path / "wd"
  real_log_line = writers.log_line

  def log_line(step, total, metrics, keys=()):
    real_log_line(step, total, metrics, keys)
    if step == 20 and "pretrain/loss" in metrics:
      _sigterm_self()

  monkeypatch.setattr(writers, "log_line", log_line)
  with pytest.raises(preemption.Preempted, match="saved pretraining iteration 20"):
    modes.run(tiny_config(**over), str(wd), mode="pretrain")
  assert not (wd / "pretrain").exists() and (wd / "pretrain_resume" / "meta.json").exists()
  monkeypatch.setattr(writers, "log_line", real_log_line)
  modes.run(tiny_config(**over), str(wd), mode="pretrain")
  assert not (wd / "pretrain_resume").exists()
  a, _ = ckpt_lib.load_params(str(tmp_path / "ref" / "pretrain"))
  b, _ = ckpt_lib.load_params(str(wd / "pretrain"))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  ra, rb = records(tmp_path / "ref" / "pretrain_logs"), records(wd / "pretrain_logs")
  # records at steps 1, 10, 20, ..., 60 (pretraining logs its first step too)
  assert [writers.comparable(r) for r in ra] == [writers.comparable(r) for r in rb] and len(ra) == 7
