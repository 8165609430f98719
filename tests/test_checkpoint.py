"""Faults a long run survives (docs/faults.md): a damaged checkpoint, a failing save, SIGTERM.

One uninterrupted in-process reference run (the tiny 2D config of conftest.py) is
compared with runs that met a fault and were started again: the final state must be
bitwise equal and metrics.jsonl equal record for record (``perf/`` fields aside).
"""

import errno
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import experiment, modes, preemption, train, writers
from conftest import REPO, cli_flags, main_cmd, records, subprocess_env, tiny_config

N = 1000
RUN = dict(
  training__num_iters=N,
  training__log_every=50,
  training__checkpoint_every=250,
  training__eval_every=500,
  training__best_metric="sw",
  training__keep_checkpoints=3,
)
SAMPLE = dict(sample__num=256, sample__batch_size=128)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  wd = tmp_path_factory.mktemp("reference")
  modes.run(tiny_config(**RUN), str(wd))
  assert ckpt_lib.committed_steps(str(wd)) == [500, 750, 1000]
  return wd


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


def _assert_same_final_state(a_dir, b_dir):
  a, ma = ckpt_lib.load_raw(str(a_dir))
  b, mb = ckpt_lib.load_raw(str(b_dir))
  assert ma["step"] == mb["step"] == N
  flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _assert_same_records(a_dir, b_dir):
  ra, rb = records(a_dir), records(b_dir)
  assert [(r["step"], r["kind"]) for r in ra] == [(r["step"], r["kind"]) for r in rb]
  for x, y in zip(ra, rb):
    assert writers.comparable(x) == writers.comparable(y), (x["step"], x["kind"])


def _assert_logs_whole(wd):
  """metrics.jsonl ends with a complete line; every TensorBoard event file ends with a complete record."""
  text = (wd / "metrics.jsonl").read_text()
  assert text.endswith("\n")
  assert len(records(wd)) == len([l for l in text.splitlines() if l.strip()])
  for path in (wd / "tensorboard").glob("events.out.tfevents.*"):
    assert writers._complete_length(str(path)) == path.stat().st_size, path  # pylint: disable=protected-access


# ---------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_moved_aside_and_training_resumes_exactly(reference, tmp_path, damage, caplog):
  wd = _copy(reference, tmp_path / "wd")
  shutil.rmtree(wd / "checkpoints" / "1000")  # a run that was stopped after saving 750 ...
  DAMAGE[damage](wd / "checkpoints" / "750")  # ... whose newest checkpoint was then damaged
  meta500 = ckpt_lib.read_meta(str(reference), 500)
  # every reader agrees on the newest checkpoint that restores
  exp = experiment.build(tiny_config(**RUN))
  assert ckpt_lib.select(str(wd)).step == 500
  assert ckpt_lib.read_meta(str(wd))["step"] == 500 and ckpt_lib.load_raw(str(wd))[1] == meta500
  assert ckpt_lib.check_compatible(str(wd), exp.abstract_state()) is None
  caplog.set_level("WARNING")
  modes.run(tiny_config(**RUN), str(wd))
  warned = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warned) == 1 and warned[0].startswith("checkpoint 750 in ") and "using step 500" in warned[0]
  assert "moved aside to 750.damaged" in warned[0]
  assert sorted(os.listdir(wd / "checkpoints")) == ["1000", "500", "750", "750.damaged"]
  _assert_same_final_state(reference, wd)
  _assert_same_records(reference, wd)


def test_damaged_newest_checkpoint_through_the_cli(reference, tmp_path):
  """The user's view: one warning line naming step and reason, exit 0, the damaged folder kept."""
  wd = _copy(reference, tmp_path / "wd")
  shutil.rmtree(wd / "checkpoints" / "1000")
  _truncate(wd / "checkpoints" / "750")
  res = subprocess.run(
    main_cmd(wd, *cli_flags(**RUN)), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 0, res.stderr[-3000:]
  warned = [l for l in res.stderr.splitlines() if "does not restore" in l]
  assert len(warned) == 1 and "checkpoint 750" in warned[0] and "JSONDecodeError" in warned[0], warned
  assert "resuming from step 500" in res.stderr and "Traceback" not in res.stderr
  assert (wd / "checkpoints" / "750.damaged").is_dir()
  _assert_same_final_state(reference, wd)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_sample_uses_the_newest_checkpoint_that_restores(reference, tmp_path, damage, caplog):
  good = _copy(reference, tmp_path / "good")
  shutil.rmtree(good / "checkpoints" / "1000")
  modes.run(tiny_config(**RUN, **SAMPLE), str(good), mode="sample")
  wd = _copy(reference, tmp_path / "wd")
  DAMAGE[damage](wd / "checkpoints" / "1000")
  caplog.set_level("WARNING")
  modes.run(tiny_config(**RUN, **SAMPLE), str(wd), mode="sample")
  warned = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warned) == 1 and "checkpoint 1000" in warned[0] and "using step 750" in warned[0]
  assert "left in place" in warned[0] and (wd / "checkpoints" / "1000").is_dir()  # sampling changes no checkpoint
  np.testing.assert_array_equal(np.load(wd / "samples.npz")["arr_0"], np.load(good / "samples.npz")["arr_0"])


def test_mis_shaped_newest_checkpoint_is_skipped(reference, tmp_path):
  """A newest checkpoint whose arrays disagree with the state (here: a leaf cut to another shape)."""
  wd = _copy(reference, tmp_path / "wd")
  state, meta = ckpt_lib.load_raw(str(reference), 1000)
  state["value"]["params"]["dense_0"]["kernel"] = state["value"]["params"]["dense_0"]["kernel"][:, :8]
  shutil.rmtree(wd / "checkpoints" / "1000")
  ck = ckpt_lib.Checkpointer(str(wd), keep=5, async_save=False)
  ck.save(1000, state, meta={k: v for k, v in meta.items() if k not in ("step", "metrics")})
  ck.close()
  exp = experiment.build(tiny_config(**RUN))
  sel = ckpt_lib.select(str(wd), exp.abstract_state())
  assert sel.step == 750 and [s for s, _ in sel.damaged] == [1000]
  assert "value/params/dense_0/kernel: checkpoint (3, 8) float32 vs config (3, 16)" in sel.damaged[0][1]
  assert ckpt_lib.check_compatible(str(wd), exp.abstract_state()) is None
  # the same checkpoints under a config they do not fit at all: the architecture error, not damage
  with pytest.raises(experiment.ConfigError, match="does not fit the configured architecture"):
    modes.run(tiny_config(**dict(RUN, value__hidden=(8, 8))), str(wd))


def test_no_checkpoint_restores_is_one_error_line_and_changes_nothing(reference, tmp_path):
  wd = _copy(reference, tmp_path / "wd")
  for step in (500, 750, 1000):
    _truncate(wd / "checkpoints" / str(step))
  before = _snapshot(wd)
  res = subprocess.run(
    main_cmd(wd, *cli_flags(**RUN)), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 2, res.stderr[-3000:]
  errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
  assert f"no checkpoint under {wd / 'checkpoints'} restores" in errors[0]
  assert all(f"step {s}: JSONDecodeError" in errors[0] for s in (1000, 750, 500)), errors[0]
  assert _snapshot(wd) == before
  for mode in ("sample", "eval"):  # the same rule, in-process
    with pytest.raises(experiment.ConfigError, match="restores; tried step 1000"):
      modes.run(tiny_config(**RUN, **SAMPLE), str(wd), mode=mode)
  assert _snapshot(wd) == before


def test_damaged_best_checkpoint_is_an_error_naming_it(reference, tmp_path):
  wd = _copy(reference, tmp_path / "wd")
  (best,) = ckpt_lib.committed_steps(str(wd), best=True)
  _truncate(wd / "checkpoints_best" / str(best))
  before = _snapshot(wd)
  with pytest.raises(experiment.ConfigError, match=f"the best checkpoint {wd}/checkpoints_best/{best} does not"):
    modes.run(tiny_config(**dict(RUN, training__num_iters=N + 50)), str(wd))
  with pytest.raises(ckpt_lib.UnusableCheckpoints, match="checkpoints_best"):
    ckpt_lib.load_raw(str(wd), best=True)
  assert _snapshot(wd) == before


# ---------------------------------------------------------------- failing saves
def test_failing_asynchronous_save_is_one_error_and_the_same_command_resumes(reference, tmp_path, monkeypatch):
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
    modes.run(tiny_config(**RUN), str(wd))
  msg = str(err.value)
  assert msg.startswith(f"saving checkpoint 750 to {wd / 'checkpoints'} failed (OSError: [Errno 28]")
  assert f"the workdir {wd} has " in msg and " free; the last complete checkpoint is step 500" in msg
  assert "\n" not in msg
  assert ckpt_lib.committed_steps(str(wd)) == [250, 500]
  assert not [n for n in os.listdir(wd / "checkpoints") if "tmp" in n]
  _assert_logs_whole(wd)
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)  # space freed
  modes.run(tiny_config(**RUN), str(wd))
  _assert_same_final_state(reference, wd)
  _assert_same_records(reference, wd)


def test_a_failed_metrics_write_leaves_no_half_line(tmp_path, monkeypatch):
  w = writers.MetricWriter(str(tmp_path), tensorboard=False)
  w.write(1, {"loss": 1.0})
  before = (tmp_path / "metrics.jsonl").read_bytes()
  real_write, calls = os.write, []

  def write(fd, data):  # a short write, then the disk is full
    calls.append(len(data))
    if len(calls) > 1:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(fd, bytes(data[:7]))

  monkeypatch.setattr(os, "write", write)
  with pytest.raises(OSError, match="No space left"):
    w.write(2, {"loss": 2.0})
  monkeypatch.setattr(os, "write", real_write)
  assert len(calls) == 2 and (tmp_path / "metrics.jsonl").read_bytes() == before
  w.write(3, {"loss": 3.0})
  w.close()
  assert [r["step"] for r in records(tmp_path)] == [1, 3]


def _tmpfs(path, size):
  path.mkdir()
  res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
  return res.returncode == 0


@pytest.mark.slow
def test_full_disk_on_a_tiny_tmpfs(reference, tmp_path):
  """The real thing where the machine allows it: the workdir on a 600 KB tmpfs fills during the run."""
  mnt = tmp_path / "tmpfs"
  if not _tmpfs(mnt, "600k"):
    pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched test covers the failing save")
  try:
    wd = mnt / "wd"
    res = subprocess.run(
      main_cmd(wd, *cli_flags(**RUN)), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and res.stderr.rstrip().endswith(errors[0]), res.stderr[-3000:]
    last = ckpt_lib.latest_step(str(wd))
    assert str(wd) in errors[0] and " free; the last complete checkpoint is " in errors[0]
    assert f"the last complete checkpoint is step {last};" in errors[0] and "No space left" in errors[0]
    assert last is not None and last < N
    assert not [n for n in os.listdir(wd / "checkpoints") if "tmp" in n]
    _assert_logs_whole(wd)
    freed = shutil.copytree(wd, tmp_path / "freed")
  finally:
    subprocess.run(["umount", str(mnt)], check=False)
  res = subprocess.run(
    main_cmd(freed, *cli_flags(**RUN)), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert f"resuming from step {last}" in res.stderr
  _assert_same_final_state(reference, freed)
  _assert_same_records(reference, freed)


# ---------------------------------------------------------------- SIGTERM
@pytest.mark.slow
def test_sigterm_saves_exits_143_and_the_restart_is_exact(reference, tmp_path):
  wd = tmp_path / "wd"
  flags = cli_flags(**RUN)
  proc = subprocess.Popen(
    main_cmd(wd, *flags), cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  err = []
  for line in proc.stderr:  # SIGTERM once training is under way
    err.append(line)
    if f"step 100/{N}" in line:
      proc.send_signal(signal.SIGTERM)
      break
  err.append(proc.communicate(timeout=120)[1])
  err = "".join(err)
  assert proc.returncode == preemption.EXIT_STATUS, err[-3000:]
  stopped = ckpt_lib.latest_step(str(wd))
  assert 100 <= stopped < N, (stopped, err[-2000:])  # saved where it stopped
  assert f"preempted: saved checkpoint {stopped} in {wd / 'checkpoints'}" in err and "Traceback" not in err
  assert [r["step"] for r in records(wd)][-1] <= stopped
  _assert_logs_whole(wd)
  res = subprocess.run(
    main_cmd(wd, *flags), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert f"resuming from step {stopped}" in res.stderr
  _assert_same_final_state(reference, wd)
  _assert_same_records(reference, wd)


def _sigterm_self():
  os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_an_evaluation_drops_it_and_the_restart_does_it(reference, tmp_path, monkeypatch):
  wd = tmp_path / "wd"
  real_evaluate = train.evaluate

  def evaluate(exp, evals, state, workdir, step, writer, final):
    if step == 500:
      _sigterm_self()  # arrives mid-evaluation: the handler raises inside it
      time.sleep(5)  # (not reached)
    return real_evaluate(exp, evals, state, workdir, step, writer, final)

  monkeypatch.setattr(train, "evaluate", evaluate)
  with pytest.raises(preemption.Preempted, match="saved checkpoint 500"):
    modes.run(tiny_config(**RUN), str(wd))
  assert ckpt_lib.read_meta(str(wd))["eval_pending"] is True
  assert not [r for r in records(wd) if r["kind"] == "eval"]  # dropped: no record of it
  monkeypatch.setattr(train, "evaluate", real_evaluate)
  modes.run(tiny_config(**RUN), str(wd))
  _assert_same_final_state(reference, wd)
  _assert_same_records(reference, wd)  # the evaluation of step 500 was done on restart
  assert ckpt_lib.committed_steps(str(wd), best=True) == ckpt_lib.committed_steps(str(reference), best=True)


def test_sigterm_during_compilation_ends_without_training(reference, tmp_path, monkeypatch):
  wd = _copy(reference, tmp_path / "wd")
  shutil.rmtree(wd / "checkpoints" / "1000")
  before = ckpt_lib.committed_steps(str(wd))
  real_compile = train.compile_train_step

  def compile_train_step(exp, mesh):
    _sigterm_self()
    return real_compile(exp, mesh)

  monkeypatch.setattr(train, "compile_train_step", compile_train_step)
  with pytest.raises(preemption.Preempted, match="preempted before training; the checkpoint of step 750 stands"):
    modes.run(tiny_config(**RUN), str(wd))
  assert ckpt_lib.committed_steps(str(wd)) == before
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run


def test_sigterm_during_pretraining_saves_it_and_the_restart_is_exact(tmp_path, monkeypatch):
  over = dict(RUN, pretrain__num_iters=60, pretrain__batch_size=64, training__log_every=10)
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
