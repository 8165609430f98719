"""Exact resume after SIGKILL, reproducibility, and what a finished run leaves behind.

One uninterrupted reference run (in-process) is compared with
  * the same run launched through main.py, SIGKILLed while an asynchronous save is
    in flight, and restarted: final state bitwise equal, metrics.jsonl equal record
    for record except the wall-clock ``perf/`` fields;
  * a second in-process run of the same config: the same, i.e. reproducible.
"""

import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import modes, writers
from conftest import REPO, cli_flags, main_cmd, records, subprocess_env, tiny_config

#: the final evaluation's metrics (vector data), stored with the last checkpoint
EVAL_KEYS = ("sw", "sw_std", "sw_floor", "sw_floor_std", "auc", "auc_ideal")

N = 300
RUN = dict(
  training__num_iters=N,
  training__log_every=25,
  training__checkpoint_every=25,
  training__eval_every=100,
  training__best_metric="sw",
  training__keep_checkpoints=3,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  wd = tmp_path_factory.mktemp("reference")
  final = modes.run(tiny_config(**RUN), str(wd))
  return wd, final


def _assert_same_state(a_dir, b_dir):
  a, ma = ckpt_lib.load_raw(str(a_dir))
  b, mb = ckpt_lib.load_raw(str(b_dir))
  assert ma["step"] == mb["step"] == N
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  assert ma["metrics"] == mb["metrics"] and ma["data_position"] == mb["data_position"]


def _assert_same_records(a_dir, b_dir):
  ra, rb = records(a_dir), records(b_dir)
  keys = [(r["step"], r["kind"]) for r in rb]
  assert len(keys) == len(set(keys)), "duplicated records"
  assert [(r["step"], r["kind"]) for r in ra] == keys
  for x, y in zip(ra, rb):
    assert writers.comparable(x) == writers.comparable(y), (x["step"], x["kind"])


def test_reference_run_layout_and_logging(reference):
  wd, final = reference
  recs = records(wd)
  train_steps = [r["step"] for r in recs if r["kind"] == "train"]
  assert train_steps == [1] + list(range(25, N + 1, 25))
  assert [r["step"] for r in recs if r["kind"] == "eval"] == [100, 200, 300]
  last = [r for r in recs if r["kind"] == "train"][-1]
  # every quantity of dxmi.iteration_metrics, vectors expanded per step, plus skips and speed
  T = 3
  for name in (
    "ebm/d_loss",
    "ebm/pos_e",
    "ebm/neg_e",
    "ebm/reg",
    "ebm/grad_norm",
    "ebm/v_loss",
    "sampler/sampler_loss",
    "sampler/causal_entropy",
    "sampler/running_cost",
    "sampler/grad_norm",
    "weight_norm/sampler",
    "weight_norm/value",
    "nonfinite/skipped_total",
    "perf/iters_per_sec",
    "perf/eta_sec",
    *[
      f"{v}_{t}"
      for v in ("running_cost/step", "value/step", "td/v_loss", "adavelreg/beta", "sigma/sigma")
      for t in range(T)
    ],
  ):
    assert isinstance(last[name], float), name
  assert last["nonfinite/skipped_total"] == 0
  # TensorBoard holds every logged number at the logged steps (float32 of the JSON value)
  tb = writers.read_tensorboard_scalars(str(wd / "tensorboard"))
  for r in recs:
    prefix = "" if r["kind"] == "train" else "eval/"
    for k, v in r.items():
      if k in ("step", "kind") or v is None:
        continue
      assert (r["step"], float(np.float32(v))) in tb[prefix + k], (k, r["step"])
  # checkpoints: the last 3 saves, the best by sw, the final one carries the final evaluation
  assert ckpt_lib.committed_steps(str(wd)) == [250, 275, 300]
  evals = {r["step"]: r["sw"] for r in recs if r["kind"] == "eval"}
  assert ckpt_lib.committed_steps(str(wd), best=True) == [min(evals, key=evals.get)]
  state, meta = ckpt_lib.load_raw(str(wd))
  assert meta["final"] and meta["metrics"]["sw"] == final["sw"] == evals[N]
  assert meta["data_position"] == {"step": N, "seed": 0, "batch_size": 64, "data": "8gaussians", "path": ""}
  assert int(state["step"]) == N and state["velocity_scale"].shape == (T,)
  assert {"params", "opt_state", "step"} <= set(state["policy"]) and {"params", "opt_state"} <= set(state["value"])
  assert (wd / "figure.png").exists() and (wd / "config.json").exists()


def test_finished_run_started_again_changes_nothing(reference):
  wd, final = reference
  before = (wd / "metrics.jsonl").read_bytes()
  # returns the final evaluation stored with the last checkpoint
  assert modes.run(tiny_config(**RUN), str(wd)) == {k: final[k] for k in EVAL_KEYS}
  assert (wd / "metrics.jsonl").read_bytes() == before
  assert ckpt_lib.committed_steps(str(wd)) == [250, 275, 300]


@pytest.mark.slow
def test_sigkill_during_async_save_then_resume_is_exact(reference, tmp_path):
  ref, _ = reference
  wd = tmp_path / "killed"
  ckdir = wd / "checkpoints"
  flags = cli_flags(**RUN)
  env = subprocess_env()
  proc = subprocess.Popen(
    main_cmd(wd, *flags), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  # kill while a save is being written (its temporary folder exists) after at least one commit
  deadline = time.time() + 240
  caught_tmp = False
  while time.time() < deadline and proc.poll() is None:
    names = os.listdir(ckdir) if ckdir.is_dir() else []
    if any(n.isdigit() for n in names) and any("orbax-checkpoint-tmp" in n for n in names):
      proc.send_signal(signal.SIGKILL)
      caught_tmp = True
      break
    time.sleep(0.001)
  err = proc.communicate(timeout=60)[1]
  assert proc.returncode == -signal.SIGKILL, f"the run ended on its own (rc {proc.returncode}): {err[-2000:]}"
  committed = ckpt_lib.committed_steps(str(wd))
  assert committed and committed[-1] < N
  assert caught_tmp
  # a second, fabricated partial save on top: also invisible
  fake = ckdir / f"{committed[-1] + 50}.orbax-checkpoint-tmp"
  shutil.copytree(ckdir / str(committed[-1]), fake, dirs_exist_ok=True)
  for root, _, files in os.walk(fake):
    for f in files:
      if f in ("commit_success.txt", "_CHECKPOINT_METADATA", "manifest.ocdbt"):
        os.remove(os.path.join(root, f))
  assert ckpt_lib.latest_step(str(wd)) == committed[-1]
  # the killed run may have logged past its last checkpoint: those records must go
  stale = [r["step"] for r in records(wd) if r["step"] > committed[-1]]

  res = subprocess.run(main_cmd(wd, *flags), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert f"resuming from step {committed[-1]}" in res.stderr
  _assert_same_state(ref, wd)
  _assert_same_records(ref, wd)
  assert not [n for n in os.listdir(ckdir) if "tmp" in n]
  assert ckpt_lib.committed_steps(str(wd)) == ckpt_lib.committed_steps(str(ref))
  assert ckpt_lib.committed_steps(str(wd), best=True) == ckpt_lib.committed_steps(str(ref), best=True)
  # TensorBoard: the restarted writer hides the lost stretch; the curves equal the reference's
  tb_ref = writers.read_tensorboard_scalars(str(ref / "tensorboard"))
  tb = writers.read_tensorboard_scalars(str(wd / "tensorboard"))
  for tag in ("ebm/d_loss", "sampler/sampler_loss", "eval/sw"):
    assert tb[tag] == tb_ref[tag], tag
  print(f"killed after committed step {committed[-1]}; {len(stale)} stale records dropped")


def test_same_config_reproduces_exactly(reference, tmp_path):
  ref, final = reference
  again = modes.run(tiny_config(**RUN), str(tmp_path))
  _assert_same_records(ref, tmp_path)
  _assert_same_state(ref, tmp_path)
  assert {k: v for k, v in again.items() if not k.startswith("perf/")} == {
    k: v for k, v in final.items() if not k.startswith("perf/")
  }


def test_step_zero_is_a_checkpoint_the_best_can_pick_and_a_resume_point(tmp_path):
  """eval_at_start + best_metric: step 0 is evaluated, saved and offered to the best manager (so the
  starting sampler can be selected); a run whose last checkpoint is step 0 resumes from it exactly and
  does not evaluate step 0 again."""
  over = dict(
    training__num_iters=4,
    training__log_every=2,
    training__checkpoint_every=2,
    training__eval_every=2,
    training__eval_at_start=True,
    training__best_metric="min:sw",
    training__keep_checkpoints=1,
  )
  a, b = tmp_path / "a", tmp_path / "b"
  modes.run(tiny_config(**over), str(a))
  sw = {r["step"]: r["sw"] for r in records(a) if r["kind"] == "eval"}
  assert sorted(sw) == [0, 2, 4]
  assert ckpt_lib.committed_steps(str(a), best=True) == [min(sw, key=sw.get)]

  modes.run(tiny_config(**dict(over, training__num_iters=0)), str(b))  # stops at step 0
  assert ckpt_lib.committed_steps(str(b)) == [0]
  modes.run(tiny_config(**over), str(b))
  assert [(r["step"], r["kind"]) for r in records(b)] == [(r["step"], r["kind"]) for r in records(a)]
  assert {r["step"]: r["sw"] for r in records(b) if r["kind"] == "eval"} == sw
  sa, _ = ckpt_lib.load_raw(str(a))
  sb, _ = ckpt_lib.load_raw(str(b))
  for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_array_equal(x, y)
