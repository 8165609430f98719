"""Training infrastructure: non-finite handling, checkpoint safety, writers.

The helpers the train-infrastructure tests share (tiny config, CLI flags,
subprocess environment) are in conftest.py.  The 2D problem at T=3 with 16-wide MLPs and
batch 64 compiles in seconds; every run here is in-process except where the CLI
or a real process kill is the point.
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


# ------------------------------------------------------------------ checkpoints
def test_partial_save_is_invisible_and_cleaned_up(tmp_path):
  tree = {"a": np.arange(4.0, dtype=np.float32), "b": {"c": np.ones((2, 2), np.float32)}}
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep=3, async_save=True)
  ck.save(5, tree, meta={"data_position": {"step": 5}})
  ck.close()
  # what a process killed mid-save leaves: a temporary folder with part of the files
  partial = tmp_path / "checkpoints" / "10.orbax-checkpoint-tmp"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "manifest.ocdbt").write_bytes(b"\0" * 10)
  assert ckpt_lib.latest_step(str(tmp_path)) == 5 and ckpt_lib.committed_steps(str(tmp_path)) == [5]
  ck = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
  assert ck.latest_step() == 5
  ck.save(10, jax.tree.map(lambda a: a + 1, tree))  # (Orbax clears leftovers before a first save)
  ck.wait()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "5"]
  restored, meta = ck.restore(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree))
  ck.close()
  assert meta["step"] == 10
  np.testing.assert_array_equal(restored["b"]["c"], 2.0)
  raw, meta5 = ckpt_lib.load_raw(str(tmp_path), step=5)
  np.testing.assert_array_equal(raw["a"], tree["a"])
  assert meta5["data_position"] == {"step": 5}


def test_best_checkpoint_follows_metric_direction(tmp_path):
  assert ckpt_lib.parse_best_metric("sw") == ("sw", "min")
  assert ckpt_lib.parse_best_metric("auc") == ("auc", "max")
  assert ckpt_lib.parse_best_metric("max:my_score") == ("my_score", "max")
  with pytest.raises(ValueError, match="best_metric"):
    ckpt_lib.parse_best_metric("up:sw")
  tree = {"w": np.zeros(2, np.float32)}
  for spec, best in (("sw", 2), ("auc", 3)):
    wd = tmp_path / spec
    ck = ckpt_lib.Checkpointer(str(wd), keep=1, best_metric=spec, async_save=False)
    for step, m in ((1, {"sw": 0.5, "auc": 0.6}), (2, {"sw": 0.2, "auc": 0.5}), (3, {"sw": 0.3, "auc": 0.9}), (4, {})):
      ck.save(step, tree, metrics=m)
    ck.close()
    assert ckpt_lib.committed_steps(str(wd)) == [4]  # keep=1 of the latest
    assert ckpt_lib.committed_steps(str(wd), best=True) == [best]
    assert ckpt_lib.load_raw(str(wd), best=True)[1]["step"] == best


def test_checkpoint_compatibility_names_the_mismatch(tmp_path):
  exp16 = experiment.build(tiny_config())
  exp8 = experiment.build(tiny_config(value__hidden=(8, 8)))
  ck = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  ck.save(1, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), exp16.abstract_state()))
  ck.close()
  assert ckpt_lib.check_compatible(str(tmp_path), exp16.abstract_state()) is None
  msg = ckpt_lib.check_compatible(str(tmp_path), exp8.abstract_state())
  assert "mis-shaped" in msg and "value/params/dense_0/kernel: checkpoint (3, 16) float32 vs config (3, 8)" in msg


# ------------------------------------------------------------------ writers
def test_metrics_jsonl_truncation_and_torn_lines(tmp_path):
  w = writers.MetricWriter(str(tmp_path), tensorboard=False)
  for s in (1, 10, 20, 30):
    w.write(s, {"loss": float(s), "perf/iters_per_sec": 3.0, "bad": float("nan")})
  w.write(20, {"sw": 0.5}, kind="eval")
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 40, "kind": "tr')  # killed mid-write
  recs = writers.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in recs] == [1, 10, 20, 30, 20]
  assert recs[0]["bad"] is None
  assert writers.comparable(recs[0]) == {"step": 1, "kind": "train", "loss": 1.0, "bad": None}
  w.truncate_after(20)
  assert [(r["step"], r["kind"]) for r in writers.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [
    (1, "train"),
    (10, "train"),
    (20, "train"),
    (20, "eval"),
  ]
  w.close()


def test_tensorboard_reader_round_trip_and_purge(tmp_path):
  w = writers.MetricWriter(str(tmp_path))
  for s in range(1, 6):
    w.write(s, {"a/b": s * 1.5, "flag": 0.0})
  w.write(5, {"sw": 0.25}, kind="eval")
  w.close()
  tb = writers.read_tensorboard_scalars(str(tmp_path / "tensorboard"))
  assert tb["a/b"] == [(s, s * 1.5) for s in range(1, 6)] and tb["eval/sw"] == [(5, 0.25)]
  import time  # pylint: disable=import-outside-toplevel

  time.sleep(1.1)  # event files are named by the second they were opened
  w = writers.MetricWriter(str(tmp_path), purge_step=3)  # resumed from step 2
  for s in (3, 4):
    w.write(s, {"a/b": -float(s)})
  w.close()
  tb = writers.read_tensorboard_scalars(str(tmp_path / "tensorboard"))
  assert tb["a/b"] == [(1, 1.5), (2, 3.0), (3, -3.0), (4, -4.0)]
  assert tb["eval/sw"] == []


def test_first_eta_does_not_count_the_compilation(monkeypatch, caplog):
  """A 200-step run whose first step compiles for 30 s and whose steps take 0.1 s: the first progress
  line reports the start-up time and no ETA; the next one predicts the remaining steps at 0.1 s."""
  clock = [1000.0]
  monkeypatch.setattr(writers.time, "time", lambda: clock[0])
  progress = writers.Progress(200, 0)
  clock[0] += 30.0 + 0.1  # compilation + step 1
  first = progress(1)
  assert first == {"perf/startup_sec": pytest.approx(30.1)}
  clock[0] += 24 * 0.1  # steps 2..25
  second = progress(25)
  assert second["perf/iters_per_sec"] == pytest.approx(10.0)
  assert second["perf/eta_sec"] == pytest.approx(175 * 0.1)
  with caplog.at_level("INFO"):
    writers.log_line(1, 200, first)
    writers.log_line(25, 200, second)
  lines = [r.getMessage() for r in caplog.records]
  assert "compiled and started in 30.1 s" in lines[0] and "ETA" not in lines[0]
  assert "10.0 it/s" in lines[1] and "ETA 0.3 min" in lines[1]
  # after a resume at step 100, the first line is again the start-up
  resumed = writers.Progress(200, 100)
  assert set(resumed(101)) == {"perf/startup_sec"}
