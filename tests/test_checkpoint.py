"""checkpoint.py: saving and restoring (partial saves, the best checkpoint, compatibility), and the faults a
long run survives (docs/faults.md): a damaged checkpoint, a failing save.

Runs that met a fault and were started again are compared with conftest's ``fault_reference`` run (the
tiny 2D config): the final state must be bitwise equal and metrics.jsonl equal record for record
(``perf/`` fields aside).  SIGTERM is in test_preemption.py.
"""

import errno
import os
import shutil
import subprocess

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import experiment, modes, train
from dxmi_jax.errors import ConfigError
from conftest import (
  FAULT_RUN,
  FAULT_RUN_ITERS,
  REPO,
  assert_logs_whole,
  assert_same_final_state,
  assert_same_records,
  cli_flags,
  main_cmd,
  subprocess_env,
  tiny_config,
)

SAMPLE = dict(sample__num=256, sample__batch_size=128)


def _copy(ref, dst):
  shutil.copytree(ref, dst)
  return dst


def _truncate(folder):
  """Every file of ``folder`` cut to zero bytes (a failed copy, a broken filesystem)."""
  for root, _, files in os.walk(folder):
    for f in files:
      open(os.path.join(root, f), "w").close()


def _empty(folder):
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


DAMAGE = {"truncated": _truncate, "emptied": _empty}


def _snapshot(folder):
  """(path, size, mtime) of everything under ``folder``: to show that nothing changed."""
  out = []
  for root, dirs, files in os.walk(folder):
    for name in sorted(dirs + files):
      st = os.stat(os.path.join(root, name))
      out.append((os.path.relpath(os.path.join(root, name), folder), st.st_size, st.st_mtime_ns))
  return sorted(out)


# ---------------------------------------------------------------- saving and restoring
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


# ---------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_moved_aside_and_training_resumes_exactly(
  fault_reference, tmp_path, damage, caplog
):
  wd = _copy(fault_reference, tmp_path / "wd")
  shutil.rmtree(wd / "checkpoints" / "1000")  # a run that was stopped after saving 750 ...
  DAMAGE[damage](wd / "checkpoints" / "750")  # ... whose newest checkpoint was then damaged
  meta500 = ckpt_lib.read_meta(str(fault_reference), 500)
  # every reader agrees on the newest checkpoint that restores
  exp = experiment.build(tiny_config(**FAULT_RUN))
  assert ckpt_lib.select(str(wd)).step == 500
  assert ckpt_lib.read_meta(str(wd))["step"] == 500 and ckpt_lib.load_raw(str(wd))[1] == meta500
  assert ckpt_lib.check_compatible(str(wd), exp.abstract_state()) is None
  caplog.set_level("WARNING")
  modes.run(tiny_config(**FAULT_RUN), str(wd))
  warned = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warned) == 1 and warned[0].startswith("checkpoint 750 in ") and "using step 500" in warned[0]
  assert "moved aside to 750.damaged" in warned[0]
  assert sorted(os.listdir(wd / "checkpoints")) == ["1000", "500", "750", "750.damaged"]
  assert_same_final_state(fault_reference, wd)
  assert_same_records(fault_reference, wd)


def test_damaged_newest_checkpoint_through_the_cli(fault_reference, tmp_path):
  """The user's view: one warning line naming step and reason, exit 0, the damaged folder kept."""
  wd = _copy(fault_reference, tmp_path / "wd")
  shutil.rmtree(wd / "checkpoints" / "1000")
  _truncate(wd / "checkpoints" / "750")
  res = subprocess.run(
    main_cmd(wd, *cli_flags(**FAULT_RUN)), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 0, res.stderr[-3000:]
  warned = [l for l in res.stderr.splitlines() if "does not restore" in l]
  assert len(warned) == 1 and "checkpoint 750" in warned[0] and "JSONDecodeError" in warned[0], warned
  assert "resuming from step 500" in res.stderr and "Traceback" not in res.stderr
  assert (wd / "checkpoints" / "750.damaged").is_dir()
  assert_same_final_state(fault_reference, wd)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_sample_uses_the_newest_checkpoint_that_restores(fault_reference, tmp_path, damage, caplog):
  good = _copy(fault_reference, tmp_path / "good")
  shutil.rmtree(good / "checkpoints" / "1000")
  modes.run(tiny_config(**FAULT_RUN, **SAMPLE), str(good), mode="sample")
  wd = _copy(fault_reference, tmp_path / "wd")
  DAMAGE[damage](wd / "checkpoints" / "1000")
  caplog.set_level("WARNING")
  modes.run(tiny_config(**FAULT_RUN, **SAMPLE), str(wd), mode="sample")
  warned = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warned) == 1 and "checkpoint 1000" in warned[0] and "using step 750" in warned[0]
  assert "left in place" in warned[0] and (wd / "checkpoints" / "1000").is_dir()  # sampling changes no checkpoint
  np.testing.assert_array_equal(np.load(wd / "samples.npz")["arr_0"], np.load(good / "samples.npz")["arr_0"])


def test_mis_shaped_newest_checkpoint_is_skipped(fault_reference, tmp_path):
  """A newest checkpoint whose arrays disagree with the state (here: a leaf cut to another shape)."""
  wd = _copy(fault_reference, tmp_path / "wd")
  state, meta = ckpt_lib.load_raw(str(fault_reference), 1000)
  state["value"]["params"]["dense_0"]["kernel"] = state["value"]["params"]["dense_0"]["kernel"][:, :8]
  shutil.rmtree(wd / "checkpoints" / "1000")
  ck = ckpt_lib.Checkpointer(str(wd), keep=5, async_save=False)
  ck.save(1000, state, meta={k: v for k, v in meta.items() if k not in ("step", "metrics")})
  ck.close()
  exp = experiment.build(tiny_config(**FAULT_RUN))
  sel = ckpt_lib.select(str(wd), exp.abstract_state())
  assert sel.step == 750 and [s for s, _ in sel.damaged] == [1000]
  assert "value/params/dense_0/kernel: checkpoint (3, 8) float32 vs config (3, 16)" in sel.damaged[0][1]
  assert ckpt_lib.check_compatible(str(wd), exp.abstract_state()) is None
  # the same checkpoints under a config they do not fit at all: the architecture error, not damage
  with pytest.raises(ConfigError, match="does not fit the configured architecture"):
    modes.run(tiny_config(**dict(FAULT_RUN, value__hidden=(8, 8))), str(wd))


def test_no_checkpoint_restores_is_one_error_line_and_changes_nothing(fault_reference, tmp_path):
  wd = _copy(fault_reference, tmp_path / "wd")
  for step in (500, 750, 1000):
    _truncate(wd / "checkpoints" / str(step))
  before = _snapshot(wd)
  res = subprocess.run(
    main_cmd(wd, *cli_flags(**FAULT_RUN)), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 2, res.stderr[-3000:]
  errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
  assert f"no checkpoint under {wd / 'checkpoints'} restores" in errors[0]
  assert all(f"step {s}: JSONDecodeError" in errors[0] for s in (1000, 750, 500)), errors[0]
  assert _snapshot(wd) == before
  for mode in ("sample", "eval"):  # the same rule, in-process
    with pytest.raises(ConfigError, match="restores; tried step 1000"):
      modes.run(tiny_config(**FAULT_RUN, **SAMPLE), str(wd), mode=mode)
  assert _snapshot(wd) == before


def test_damaged_best_checkpoint_is_an_error_naming_it(fault_reference, tmp_path):
  wd = _copy(fault_reference, tmp_path / "wd")
  (best,) = ckpt_lib.committed_steps(str(wd), best=True)
  _truncate(wd / "checkpoints_best" / str(best))
  before = _snapshot(wd)
  with pytest.raises(ConfigError, match=f"the best checkpoint {wd}/checkpoints_best/{best} does not"):
    modes.run(tiny_config(**dict(FAULT_RUN, training__num_iters=FAULT_RUN_ITERS + 50)), str(wd))
  with pytest.raises(ckpt_lib.UnusableCheckpoints, match="checkpoints_best"):
    ckpt_lib.load_raw(str(wd), best=True)
  assert _snapshot(wd) == before


# ---------------------------------------------------------------- failing saves
def test_failing_asynchronous_save_is_one_error_and_the_same_command_resumes(fault_reference, tmp_path, monkeypatch):
  """Checkpoint 750's writes fail in the background (as a full disk makes them); the failure surfaces
  at the next save: a TrainingError naming step 750, the workdir, its free space and checkpoint 500."""
  wd = tmp_path / "wd"
  real_save = ocp.CheckpointManager.save
  armed = {}

  def save(self, step, *args, **kwargs):
    if armed.pop(str(self.directory), None):
      raise OSError(errno.ENOSPC, "No space left on device")
    if step == 750 and str(self.directory).endswith("checkpoints"):  # its writes "fail" later
      (self.directory / "750.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
      armed[str(self.directory)] = True
      return True
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(train.TrainingError) as err:
    modes.run(tiny_config(**FAULT_RUN), str(wd))
  msg = str(err.value)
  assert msg.startswith(f"saving checkpoint 750 to {wd / 'checkpoints'} failed (OSError: [Errno 28]")
  assert f"the workdir {wd} has " in msg and " free; the last complete checkpoint is step 500" in msg
  assert "\n" not in msg
  assert ckpt_lib.committed_steps(str(wd)) == [250, 500]
  assert not [n for n in os.listdir(wd / "checkpoints") if "tmp" in n]
  assert_logs_whole(wd)
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)  # space freed
  modes.run(tiny_config(**FAULT_RUN), str(wd))
  assert_same_final_state(fault_reference, wd)
  assert_same_records(fault_reference, wd)


def _tmpfs(path, size):
  path.mkdir()
  res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
  return res.returncode == 0


@pytest.mark.slow
def test_full_disk_on_a_tiny_tmpfs(fault_reference, tmp_path):
  """The real thing where the machine allows it: the workdir on a 600 KB tmpfs fills during the run."""
  mnt = tmp_path / "tmpfs"
  if not _tmpfs(mnt, "600k"):
    pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched test covers the failing save")
  try:
    wd = mnt / "wd"
    res = subprocess.run(
      main_cmd(wd, *cli_flags(**FAULT_RUN)), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and res.stderr.rstrip().endswith(errors[0]), res.stderr[-3000:]
    last = ckpt_lib.latest_step(str(wd))
    assert str(wd) in errors[0] and " free; the last complete checkpoint is " in errors[0]
    assert f"the last complete checkpoint is step {last};" in errors[0] and "No space left" in errors[0]
    assert last is not None and last < FAULT_RUN_ITERS
    assert not [n for n in os.listdir(wd / "checkpoints") if "tmp" in n]
    assert_logs_whole(wd)
    freed = shutil.copytree(wd, tmp_path / "freed")
  finally:
    subprocess.run(["umount", str(mnt)], check=False)
  res = subprocess.run(
    main_cmd(freed, *cli_flags(**FAULT_RUN)),
    cwd=REPO,
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert f"resuming from step {last}" in res.stderr
  assert_same_final_state(fault_reference, freed)
  assert_same_records(fault_reference, freed)


def test_score_uses_the_newest_checkpoint_that_restores(tmp_path, caplog):
  """--mode=score (anomaly detection on npz vectors) follows the same rule."""
  from configs import anomaly as anomaly_config  # pylint: disable=import-outside-toplevel
  from dxmi_jax.proj.anomaly import synthetic  # pylint: disable=import-outside-toplevel

  def config(**score):
    c = anomaly_config.get_config("smoke")
    c.policy.net.hidden = c.value.hidden = c.energy.hidden = (16, 16)
    c.training.num_iters, c.training.batch_size, c.training.checkpoint_every = 40, 64, 20
    c.data.path = str(tmp_path / "train.npz")
    for k, v in score.items():
      c.score[k] = v
    return c

  x, _ = synthetic.vectors(300, 50, 4, seed=0)
  np.savez(tmp_path / "train.npz", X=x[:250])
  np.savez(tmp_path / "test.npz", X=x[250:])
  modes.run(config(), str(tmp_path / "w"), "train")
  good = _copy(tmp_path / "w", tmp_path / "good")
  shutil.rmtree(good / "checkpoints" / "40")
  modes.run(config(input=str(tmp_path / "test.npz"), output=str(tmp_path / "good.npy")), str(good), "score")
  _truncate(tmp_path / "w" / "checkpoints" / "40")
  caplog.set_level("WARNING")
  modes.run(config(input=str(tmp_path / "test.npz"), output=str(tmp_path / "s.npy")), str(tmp_path / "w"), "score")
  warned = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warned) == 1 and "checkpoint 40" in warned[0] and "using step 20" in warned[0]
  np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), np.load(tmp_path / "good.npy"))
