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

Multi-host: every process must call ``save``/``restore``/``close`` (Orbax
synchronises them and each process writes the shards it owns); ``workdir`` must
be a path every process sees.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional, Tuple

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

    Raises NonFiniteStateError, before writing anything, if a floating leaf is NaN/Inf.
    """
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
    self.latest.save(step, args=args(), force=True)
    if self.best is not None and self.best_metric in metrics and np.isfinite(metrics[self.best_metric]):
      self.best.save(step, args=args(), metrics={self.best_metric: metrics[self.best_metric]}, force=True)

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
    """Blocks until every asynchronous save has been committed."""
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self):
    self.wait()
    self.latest.close()
    if self.best is not None:
      self.best.close()


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
  """The newest committed step under ``<workdir>/checkpoints``, or None."""
  steps = committed_steps(workdir)
  return steps[-1] if steps else None


def has_checkpoint(workdir: str) -> bool:
  return latest_step(workdir) is not None


def _step_path(workdir: str, step: Optional[int], best: bool = False) -> epath.Path:
  if step is None:  # the latest (the best manager keeps a single step)
    steps = committed_steps(workdir, best)
    step = steps[-1] if steps else None
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {_dir(workdir, best)}")
  return epath.Path(_dir(workdir, best)) / str(step)


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


def check_compatible(workdir: str, abstract_state, step: Optional[int] = None) -> Optional[str]:
  """None if the checkpoint at ``step`` (default latest) has exactly ``abstract_state``'s
  leaves, shapes and dtypes; else a one-line description of the first differences."""
  saved = _normalised_leaves(ocp.StandardCheckpointHandler().metadata(_step_path(workdir, step) / "state"))
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
  """The JSON meta of a checkpoint (default: the latest / the best)."""
  return ocp.JsonCheckpointHandler().restore(_step_path(workdir, step, best) / "meta")


def load_raw(workdir: str, step: Optional[int] = None, best: bool = False):
  """(state as nested dicts of numpy arrays, meta) without a config: for tools and tests."""
  path = _step_path(workdir, step, best)
  handler = ocp.StandardCheckpointHandler()
  # onto this process's first device, whatever topology wrote the checkpoint
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), handler.metadata(path / "state")
  )
  state = handler.restore(path / "state", args=ocp.args.StandardRestore(target))
  return jax.tree.map(np.asarray, state), read_meta(workdir, int(path.name), best)


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
