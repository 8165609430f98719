"""train.py: non-finite iterations (skipped, counted, stopped) and the state that is never checkpointed.

The shared helpers (tiny config, CLI flags, subprocess environment) are in conftest.py.  The 2D
problem at T=3 with 16-wide MLPs and batch 64 compiles in seconds; every run here is in-process.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import experiment, modes, parallel, train, writers

from conftest import REPO, cli_flags, main_cmd, records, subprocess_env, tiny_config  # noqa: E402,F401


def huge_npy(path, n, bad_rows):
  """(n, 2) points from 8gaussians with ``bad_rows`` rows at 1e20: their energies overflow float32."""
  from dxmi_jax.data import toy2d  # pylint: disable=import-outside-toplevel

  x = toy2d.sample2d("8gaussians", n, np.random.default_rng(0))
  x[np.asarray(bad_rows, int)] = 1e20
  np.save(path, x)
  return str(path)


# ------------------------------------------------------------------ non-finite
def test_nonfinite_iteration_is_skipped_counted_and_recovers(tmp_path):
  """A batch whose energies overflow: the update is dropped (state bitwise kept), counted, flagged."""
  exp = experiment.build(tiny_config())
  mesh = parallel.make_mesh()
  step = train.compile_train_step(exp, mesh)
  state = train.initial_state(exp, mesh)
  good = lambda i: parallel.global_batch_from_local(exp.data.local_batch(i), mesh)
  state, m = step(state, good(0))
  assert int(m["nonfinite/skipped_total"]) == 0
  before = jax.tree.map(np.asarray, state)
  bad = parallel.global_batch_from_local({"x": np.full((64, 2), 1e20, np.float32)}, mesh)
  state, m = step(state, bad)
  after = jax.tree.map(np.asarray, state)
  for k in ("policy", "value", "velocity_scale", "rng"):
    jax.tree.map(np.testing.assert_array_equal, getattr(after, k), getattr(before, k))
  assert int(after.step) == 2 and int(after.skipped) == 1 and int(after.consecutive_skips) == 1
  assert int(m["nonfinite/ebm/d_loss"]) == 1 and int(m["nonfinite/skipped_total"]) == 1
  assert int(after.nonfinite_mask) & 1  # bit 0 = ebm/d_loss
  state, m = step(state, good(2))
  assert int(state.consecutive_skips) == 0 and int(state.max_skip_run) == 1 and int(state.skipped) == 1
  assert not np.array_equal(
    np.asarray(state.value.params["dense_0"]["kernel"]), after.value.params["dense_0"]["kernel"]
  )
  with pytest.raises(train.TrainingError, match="1 consecutive iterations had non-finite values in ebm/d_loss"):
    train._check_skips(after, 1, 2)  # pylint: disable=protected-access


def test_occasional_bad_batches_are_logged_and_the_run_finishes(tmp_path):
  # 3 bad rows among 1000: about 18% of the 64-row batches contain one
  path = huge_npy(tmp_path / "pts.npy", 1000, [5, 500, 900])
  c = tiny_config(
    data__name="npy",
    data__path=path,
    training__num_iters=40,
    training__log_every=10,
    training__checkpoint_every=20,
    training__max_consecutive_skips=5,
  )
  wd = tmp_path / "wd"
  modes.run(c, str(wd))
  train_recs = [r for r in records(wd) if r["kind"] == "train"]
  assert [r["step"] for r in train_recs] == [1, 10, 20, 30, 40]
  skipped = train_recs[-1]["nonfinite/skipped_total"]
  # the exact count follows from the data order: count the batches holding a bad row
  data = experiment.build(c).data
  expected = sum(bool(np.any(data.local_batch(i)["x"] > 1e19)) for i in range(40))
  assert skipped == expected > 0, (skipped, expected)
  # the steps flagged in the log are the bad ones
  for r in train_recs:
    bad_now = np.any(data.local_batch(r["step"] - 1)["x"] > 1e19)
    assert r["nonfinite/ebm/d_loss"] == float(bad_now)
  tb = writers.read_tensorboard_scalars(str(wd / "tensorboard"))
  assert tb["nonfinite/skipped_total"][-1] == (40, float(expected))
  state, meta = ckpt_lib.load_raw(str(wd))
  assert meta["step"] == 40 and ckpt_lib.first_nonfinite_leaf(state) is None


def test_consecutive_non_finite_iterations_stop_the_run(tmp_path):
  path = huge_npy(tmp_path / "pts.npy", 200, np.arange(200))
  c = tiny_config(
    data__name="npy",
    data__path=path,
    training__num_iters=50,
    training__log_every=10,
    training__checkpoint_every=10,
    training__max_consecutive_skips=4,
  )
  wd = tmp_path / "wd"
  with pytest.raises(train.TrainingError) as err:
    modes.run(c, str(wd))
  msg = str(err.value)
  assert "stopping at step 4: 4 consecutive iterations" in msg
  assert "ebm/d_loss" in msg and "max_consecutive_skips=4" in msg
  assert ckpt_lib.committed_steps(str(wd)) == []  # stopped before the first save
  (rec,) = records(wd)  # step 1 was logged, flagged
  assert rec["step"] == 1 and rec["nonfinite/ebm/d_loss"] == 1 and rec["ebm/d_loss"] is None


def test_non_finite_state_is_never_checkpointed(tmp_path):
  good = {"w": jnp.ones((3,)), "count": jnp.zeros((), jnp.int32)}
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep=2, async_save=False)
  ck.save(1, good)
  bad = {"w": jnp.array([1.0, jnp.nan, 2.0]), "count": jnp.zeros((), jnp.int32)}
  with pytest.raises(ckpt_lib.NonFiniteStateError, match=r"step 2: non-finite values in state\['w'\]"):
    ck.save(2, bad)
  # through the loop's save: a TrainingError pointing at the last good checkpoint
  exp = experiment.build(tiny_config())
  with pytest.raises(train.TrainingError, match="last good checkpoint is step 1"):
    train._save(ck, exp, 3, {"w": jnp.array([jnp.inf, 0.0, 0.0])}, {})  # pylint: disable=protected-access
  ck.close()
  assert ckpt_lib.committed_steps(str(tmp_path)) == [1]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
