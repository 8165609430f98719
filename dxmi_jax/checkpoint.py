"""Checkpoints: Orbax CheckpointManagers for the latest k states and the best one.

Layout of a workdir:
  checkpoints/<step>/{state,meta}        the last ``keep`` saves (latest = resume point)
  checkpoints_best/<step>/{state,meta}   the best save by ``best_metric`` (if configured)

``state`` is the whole DxMIState: every TrainState (parameters and optimiser
state), the AVR velocity scales, the run's PRNG key, the step and the skip
counters.  ``meta`` is JSON: the step, the data position (batches are a pure
function of (seed, step), so the position *is* the step), the metrics at save
time, the config and the topology that wrote it.

Crash safety: Orbax writes each save into ``<step>.orbax-checkpoint-tmp`` and
renames it when complete, so a process killed mid-save (SIGKILL, preemption)
leaves the previous checkpoint intact and the partial one invisible; the next
run removes leftover temporary folders before its first save.  A state with a
non-finite leaf is never saved.

Damage (docs/faults.md): every reader uses the newest checkpoint that restores
completely (``select``); training moves newer damaged ones aside to
``<step>.damaged`` (``move_aside``).  A failed save (a full disk, any storage
error; asynchronous, so it surfaces at the next save or wait) raises SaveError,
whose one-line message names the failing step, the workdir's free space and the
last complete checkpoint.

Multi-host: every process must call ``save``/``restore``/``close`` (Orbax
synchronises them and each process writes the shards it owns); ``workdir`` must
be a path every process sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from dxmi_jax import io

ITEMS = ("state", "meta")
#: metric names for which larger is better (anything else: smaller is better)
HIGHER_IS_BETTER = ("auc", "inception_score", "precision", "recall")


class NonFiniteStateError(RuntimeError):
  pass


class SaveError(RuntimeError):
  """A save failed (no space left, any OS or storage error); the message is the one line to show:
  the step that failed, why, the workdir and its free space, the last complete checkpoint."""


def _human_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if n < 1024 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024.0
  return f"{n:.1f} TB"


def free_space(path: str) -> str:
  """'1.2 GB' free on the filesystem holding ``path`` (or its nearest existing parent); '?' if unknown."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return _human_bytes(shutil.disk_usage(path).free)
  except OSError:
    return "?"


def first_nonfinite_leaf(tree) -> Optional[str]:
  """None if every floating leaf is finite, else the path of the first bad one."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not hasattr(leaf, "dtype") or not np.issubdtype(leaf.dtype, np.floating):
      continue
    if not np.all(np.isfinite(np.asarray(jax.device_get(leaf)))):
      return jax.tree_util.keystr(path)
  return None


def parse_best_metric(spec: str) -> Tuple[str, str]:
  """``"fid"`` -> ("fid", "min"); ``"auc"`` -> ("auc", "max"); ``"max:foo"`` -> ("foo", "max").

  The direction follows ``HIGHER_IS_BETTER`` unless the spec starts with "min:" or "max:".
  """
  if ":" in spec:
    mode, name = spec.split(":", 1)
    if mode not in ("min", "max") or not name:
      raise ValueError(f"config.training.best_metric: expected NAME, min:NAME or max:NAME, got {spec!r}")
    return name, mode
  return spec, ("max" if spec in HIGHER_IS_BETTER else "min")


def _manager(
  directory: str,
  *,
  keep: int = 1,
  async_save: bool = False,
  read_only: bool = False,
  best: Optional[Tuple[str, str]] = None,
) -> ocp.CheckpointManager:
  if read_only:  # (the options Orbax would otherwise override with a warning)
    opts = dict(read_only=True, create=False, save_interval_steps=0, max_to_keep=None, enable_async_checkpointing=False)
  else:
    opts = dict(
      max_to_keep=max(1, keep), create=True, cleanup_tmp_directories=True, enable_async_checkpointing=async_save
    )
  if best is not None:
    name, mode = best
    opts.update(best_fn=lambda m: float(m[name]), best_mode=mode, keep_checkpoints_without_metrics=False)
  return ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(**opts),
    item_names=ITEMS,
    item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
  )


class Checkpointer:
  """Saves/restores DxMIState pytrees under ``<workdir>/checkpoints`` (+ ``checkpoints_best``)."""

  def __init__(
    self, workdir: str, keep: int = 3, best_metric: str = "", async_save: bool = True, read_only: bool = False
  ):
    self.workdir = os.path.abspath(workdir)
    self.async_save = async_save and not read_only
    self._pending: Optional[int] = None  # the step of an asynchronous save not yet known to be committed
    self._failed, self._failed_step = False, None
    self.latest = _manager(
      os.path.join(self.workdir, "checkpoints"), keep=keep, async_save=async_save, read_only=read_only
    )
    self.best_metric, self.best_mode = parse_best_metric(best_metric) if best_metric else ("", "min")
    self.best = None
    if best_metric:
      self.best = _manager(
        os.path.join(self.workdir, "checkpoints_best"),
        keep=1,
        async_save=async_save,
        read_only=read_only,
        best=(self.best_metric, self.best_mode),
      )

  # ------------------------------------------------------------------ save
  def save(self, step: int, state, metrics: Optional[Dict[str, float]] = None, meta: Optional[Dict[str, Any]] = None):
    """Saves ``state`` as ``step`` (asynchronously if configured); offers it to the best manager.

    Raises NonFiniteStateError, before writing anything, if a floating leaf is NaN/Inf;
    SaveError if this save, or a previous asynchronous one, failed.
    """
    self._save(step, state, metrics, meta, latest=True)

  def save_best(self, step: int, state, metrics: Dict[str, float], meta: Optional[Dict[str, Any]] = None):
    """Offers ``step`` to the best manager only: its evaluation came after it was saved (preemption)."""
    self._save(step, state, metrics, meta, latest=False)

  def _save(self, step, state, metrics, meta, latest: bool):
    bad = first_nonfinite_leaf(state)
    if bad is not None:
      raise NonFiniteStateError(f"refusing to checkpoint step {step}: non-finite values in state{bad}")
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    record = dict(
      meta or {},
      step=int(step),
      metrics=metrics,
      saved_at=time.time(),
      process_count=jax.process_count(),
      device_count=jax.device_count(),
      jax_version=jax.__version__,
    )
    args = lambda: ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record))
    with self._guard(step):
      if latest:
        self.latest.save(step, args=args(), force=True)
      if self.best is not None and self.best_metric in metrics and np.isfinite(metrics[self.best_metric]):
        self.best.save(step, args=args(), metrics={self.best_metric: metrics[self.best_metric]}, force=True)
    self._pending = step if self.async_save else None

  @contextlib.contextmanager
  def _guard(self, step: Optional[int]):
    """Turns any failure of Orbax's save machinery into one SaveError line.

    Saves are asynchronous: a failure of step N's writes surfaces in the next ``save``
    or ``wait``, so the failing step is the pending one when there is one.  The failed
    save's temporary folder is removed (it holds part of a state, and space).
    """
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (ENOSPC arrives as OSError or tensorstore's ValueError)
      failed = self._pending if self._pending is not None else step
      self._pending, self._failed, self._failed_step = None, True, failed
      self._remove_partial(failed)
      last = latest_step(self.workdir)
      raise SaveError(
        f"saving checkpoint {failed} to {os.path.join(self.workdir, 'checkpoints')} failed "
        f"({_reason(e)}); the workdir {self.workdir} has {free_space(self.workdir)} free; the last complete "
        f"checkpoint is {'step ' + str(last) if last is not None else 'none'}; free some space (or fix the "
        f"storage) and run the same command again to resume from it"
      ) from e

  def _remove_partial(self, step: Optional[int]):
    if step is None or jax.process_index() != 0:
      return
    for directory in (self.latest.directory, self.best.directory if self.best is not None else None):
      if directory is None:
        continue
      for tmp in epath.Path(directory).glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(os.fspath(tmp), ignore_errors=True)

  def prune_after(self, step: int):
    """Deletes best-checkpoints newer than ``step`` (left by a run killed after ``step``)."""
    if self.best is None:
      return
    for s in self.best.all_steps():
      if s > step:
        logging.info("removing stale best checkpoint %d (newer than the resume point %d)", s, step)
        self.best.delete(s)

  # --------------------------------------------------------------- restore
  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def best_step(self) -> Optional[int]:
    return None if self.best is None else self.best.best_step()

  def restore(self, abstract_state, step: Optional[int] = None, best: bool = False):
    """(state, meta) of ``step`` (default: the latest, or the best with ``best=True``).

    ``abstract_state``: ShapeDtypeStructs (with shardings) of the state to fill.
    """
    mgr = self.best if best else self.latest
    if mgr is None:
      raise ValueError("no best-checkpoint manager (config.training.best_metric is empty)")
    if step is None:
      step = mgr.best_step() if best else mgr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {mgr.directory}")
    restored = mgr.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    )
    logging.info("restored step %d from %s", step, mgr.directory)
    return restored["state"], restored["meta"]

  def wait(self):
    """Blocks until every asynchronous save has been committed; SaveError if one failed."""
    with self._guard(None):
      self.latest.wait_until_finished()
      if self.best is not None:
        self.best.wait_until_finished()
    self._pending = None

  def close(self, quiet: bool = False):
    """Waits for pending saves (SaveError if one failed) and releases the managers; after a
    failure already reported, or with ``quiet`` (closing after another error, the one to
    report), a failed save raises nothing (its partial folder is still removed)."""
    try:
      if not self._failed:
        self.wait()
    except SaveError:
      if not quiet:
        raise
    finally:
      for mgr in (self.latest, self.best):
        if mgr is None:
          continue
        try:
          mgr.close()
        except Exception:  # pylint: disable=broad-except
          if not self._failed:
            raise
      if self._failed:  # again: the failed save's background threads may have written after the first removal
        self._remove_partial(self._failed_step)


# ------------------------------------------------------------- read-only helpers
# Plain file reads, no CheckpointManager: a manager's constructor synchronises all
# processes, so these probes can run anywhere (before the workdir exists, on one
# process only) without desynchronising a multi-host job.
def _dir(workdir: str, best: bool = False) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints_best" if best else "checkpoints")


def committed_steps(workdir: str, best: bool = False):
  """Sorted steps of the complete checkpoints (partial ``*.orbax-checkpoint-tmp*`` saves excluded)."""
  return sorted(ocp.path.step.checkpoint_steps(_dir(workdir, best)))


def latest_step(workdir: str) -> Optional[int]:
  """The newest committed step under ``<workdir>/checkpoints``, or None (it may be damaged: see ``select``)."""
  steps = committed_steps(workdir)
  return steps[-1] if steps else None


def has_checkpoint(workdir: str) -> bool:
  return latest_step(workdir) is not None


def _step_path(workdir: str, step: int, best: bool = False) -> epath.Path:
  return epath.Path(_dir(workdir, best)) / str(step)


# --------------------------------------------------- the newest checkpoint that restores
#: a checkpoint that does not restore is renamed <step> + this suffix (never deleted)
DAMAGED_SUFFIX = ".damaged"


class UnusableCheckpoints(ValueError):
  """No committed checkpoint restores; the message names the folder and every step tried, with why."""


class CheckpointMismatch(ValueError):
  """The checkpoints restore but do not fit the configured architecture; the message says how."""


@dataclasses.dataclass
class Selection:
  """What ``select`` found: the step to use and the newer ones that do not restore."""

  step: int
  directory: str
  damaged: List[Tuple[int, str]]  # (step, reason), newest first
  state: Any  # the step's state as nested dicts of numpy arrays
  meta: Dict[str, Any]


def _reason(e: BaseException) -> str:
  """One short line for why a checkpoint did not restore (Orbax/tensorstore messages run long)."""
  text = " ".join(str(e).split()) or "(no message)"
  return f"{type(e).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _read_checkpoint(path: epath.Path):
  """(state as nested dicts of numpy arrays, meta) of one checkpoint folder, read in full on the host.

  Reading every array is what proves that a checkpoint restores: a truncated data file
  passes a metadata-only check.  Raises whatever the reads raise; ValueError if the
  arrays disagree with the checkpoint's own metadata or the meta's step with the folder.
  """
  meta = ocp.JsonCheckpointHandler().restore(path / "meta")
  if not isinstance(meta, dict) or meta.get("step") != int(path.name):
    raise ValueError(f"meta records step {meta.get('step') if isinstance(meta, dict) else meta!r}")
  handler = ocp.PyTreeCheckpointHandler()
  tree = handler.metadata(path / "state").tree
  restore_args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = handler.restore(path / "state", args=ocp.args.PyTreeRestore(restore_args=restore_args))
  want, got = _normalised_leaves(tree), _normalised_leaves(state)
  if want != got:
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    raise ValueError(f"arrays do not match the checkpoint's metadata: {bad[:3]}")
  return state, meta


def select(workdir: str, abstract_state=None, best: bool = False) -> Selection:
  """The newest committed checkpoint that restores completely (and, given ``abstract_state``, fits it).

  The one rule every reader of a run's checkpoints follows (training's resume, the
  sample/eval/score modes, ``read_meta``, ``load_raw``, ``check_compatible``): steps are
  tried newest first; each is read in full (``_read_checkpoint``); the first that
  restores wins, and the newer ones are returned in ``damaged`` with the reason.  Nothing
  is changed on disk (``move_aside`` does that).

  Raises FileNotFoundError if there is no committed checkpoint; CheckpointMismatch if
  the newest readable one does not fit ``abstract_state`` and no other does;
  UnusableCheckpoints (the folder, each step and why) if none restores; with
  ``best=True`` (checkpoints_best keeps one step) any damage is UnusableCheckpoints.
  """
  directory = _dir(workdir, best)
  steps = committed_steps(workdir, best)
  if not steps:
    raise FileNotFoundError(f"no checkpoint under {directory}")
  tried, mismatch = [], None
  for step in reversed(steps[-1:] if best else steps):  # the best manager keeps a single step
    try:
      state, meta = _read_checkpoint(_step_path(workdir, step, best))
    except Exception as e:  # pylint: disable=broad-except  (any failure to read = does not restore)
      tried.append((step, _reason(e)))
      continue
    problem = None if abstract_state is None else _mismatch(state, abstract_state)
    if problem:
      mismatch = mismatch or f"checkpoint {step}: {problem}"
      tried.append((step, f"does not fit the configured architecture ({problem})"))
      continue
    return Selection(step, directory, tried, state, meta)
  if mismatch:  # readable, but written by another architecture: the config's problem, not damage
    raise CheckpointMismatch(mismatch)
  listing = "; ".join(f"step {s}: {r}" for s, r in tried)
  if best:
    raise UnusableCheckpoints(f"the best checkpoint {directory}/{tried[0][0]} does not restore: {tried[0][1]}")
  raise UnusableCheckpoints(f"no checkpoint under {directory} restores; tried {listing}")


def move_aside(directory: str, step: int) -> str:
  """Renames ``<directory>/<step>`` to ``<step>.damaged`` (``.damaged.1``, ... if taken); returns the new path.

  Never deletes: a damaged checkpoint stays for inspection.  Leaving it in place is not
  an option: Orbax refuses to save a step that exists and its ``max_to_keep`` clean-up
  would delete it.
  """
  src = os.path.join(directory, str(step))
  dst, n = src + DAMAGED_SUFFIX, 0
  while os.path.exists(dst):
    n += 1
    dst = f"{src}{DAMAGED_SUFFIX}.{n}"
  os.rename(src, dst)
  return dst


def _normalised_leaves(tree) -> Dict[str, Tuple[tuple, str]]:
  """{"policy/params/net/dense_0/kernel": (shape, dtype)} for a state or Orbax metadata tree.

  Orbax stores dataclasses and named tuples as dicts and tuples as lists, so paths
  are compared by their names/indices only.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if leaf is None or not hasattr(leaf, "shape"):
      continue
    parts = []
    for k in path:
      for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
          parts.append(str(getattr(k, attr)))
          break
    out["/".join(parts)] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
  return out


def _mismatch(tree, abstract_state) -> Optional[str]:
  """None if ``tree`` (a state, Orbax metadata or a restored checkpoint) has exactly ``abstract_state``'s
  leaves, shapes and dtypes; else a one-line description of the first differences."""
  saved = _normalised_leaves(tree)
  want = _normalised_leaves(abstract_state)
  params_first = lambda k: ("params" not in k.split("/"), k)  # optimiser states mirror the params
  shapes = [
    f"{k}: checkpoint {saved[k][0]} {saved[k][1]} vs config {want[k][0]} {want[k][1]}"
    for k in sorted(set(want) & set(saved), key=params_first)
    if saved[k] != want[k]
  ]
  missing = sorted(set(want) - set(saved), key=params_first)
  unexpected = sorted(set(saved) - set(want), key=params_first)
  return mismatch_summary(missing, unexpected, shapes)


def check_compatible(workdir: str, abstract_state, step: Optional[int] = None) -> Optional[str]:
  """None if the checkpoint at ``step`` (default: the newest that restores, ``select``) has exactly
  ``abstract_state``'s leaves, shapes and dtypes; else a one-line description of the first differences.

  Raises UnusableCheckpoints / FileNotFoundError as ``select`` does.
  """
  if step is not None:
    return _mismatch(ocp.StandardCheckpointHandler().metadata(_step_path(workdir, step) / "state"), abstract_state)
  try:
    select(workdir, abstract_state)
  except CheckpointMismatch as e:
    return str(e).split(": ", 1)[1]
  return None


def mismatch_summary(missing, unexpected, mis_shaped) -> Optional[str]:
  """'missing [...]; unexpected [...]; mis-shaped ...' (first three of each), or None if all empty."""
  parts = []
  if missing:
    parts.append(f"missing {list(missing)[:3]}")
  if unexpected:
    parts.append(f"unexpected {list(unexpected)[:3]}")
  if mis_shaped:
    parts.append("mis-shaped " + "; ".join(list(mis_shaped)[:3]))
  return "; ".join(parts) or None


def read_meta(workdir: str, step: Optional[int] = None, best: bool = False) -> Dict[str, Any]:
  """The JSON meta of a checkpoint (default: the newest that restores / the best, ``select``)."""
  if step is None:
    return select(workdir, best=best).meta
  return ocp.JsonCheckpointHandler().restore(_step_path(workdir, step, best) / "meta")


def load_raw(workdir: str, step: Optional[int] = None, best: bool = False):
  """(state as nested dicts of numpy arrays, meta) without a config: for tools and tests.

  Default: the newest checkpoint that restores (or the best), as ``select`` picks it.
  """
  if step is None:
    sel = select(workdir, best=best)
    return sel.state, sel.meta
  return _read_checkpoint(_step_path(workdir, step, best))


def restore_step(workdir: str, step: int, abstract_state):
  """(state, meta) of checkpoint ``step`` placed as ``abstract_state`` says (ShapeDtypeStructs with
  shardings), read straight from its folder: for the read-only modes, with no CheckpointManager (whose
  scan of every step would log the damaged ones again)."""
  path = _step_path(workdir, step)
  state = ocp.StandardCheckpointHandler().restore(path / "state", args=ocp.args.StandardRestore(abstract_state))
  logging.info("restored step %d from %s", step, path.parent)
  return state, ocp.JsonCheckpointHandler().restore(path / "meta")


# ------------------------------------------------------------ params checkpoints
def save_params(directory: str, params: Any, meta: Dict[str, Any]):
  """A standalone params checkpoint (e.g. a pretrained DDPM): ``params`` + ``meta.json``."""
  directory = os.path.abspath(directory)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, "params"), params, force=True)
  ckptr.wait_until_finished()
  io.atomic_write_json(os.path.join(directory, "meta.json"), meta)


def load_params(directory: str, abstract=None):
  directory = os.path.abspath(directory)
  ckptr = ocp.StandardCheckpointer()
  params = ckptr.restore(os.path.join(directory, "params"), abstract)
  meta_path = os.path.join(directory, "meta.json")
  meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
  return params, meta
