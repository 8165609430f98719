"""Checkpoints: Orbax CheckpointManagers for the latest k states and the best one.

Layout of a workdir:
  checkpoints/<step>/{state,meta}        the last ``keep`` saves (latest = resume point)
  checkpoints_best/<step>/{state,meta}   the best save by ``best_metric`` (if configured)

Orbax writes each save into a temporary folder and renames it when complete, so
a process killed mid-save leaves the previous checkpoint intact and the partial
one invisible.  ``meta`` is JSON: the step (= data position), the metrics at save
time and the config.  A state with a non-finite leaf is never saved.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class NonFiniteStateError(RuntimeError):
  pass


def _all_finite(tree) -> Optional[str]:
  """None if every floating leaf is finite, else the path of the first bad one."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    arr = np.asarray(jax.device_get(leaf)) if hasattr(leaf, "dtype") else None
    if arr is not None and np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
      return jax.tree_util.keystr(path)
  return None


class Checkpointer:
  """Saves/restores DxMIState pytrees under ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, keep: int = 3, best_metric: str = "", best_mode: str = "min",
               async_save: bool = True):
    self.workdir = os.path.abspath(workdir)
    opts = dict(enable_async_checkpointing=async_save)
    self.latest = ocp.CheckpointManager(
        os.path.join(self.workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True, **opts),
        item_names=("state", "meta"))
    self.best_metric = best_metric
    self.best = None
    if best_metric:
      sign = 1.0 if best_mode == "min" else -1.0
      self.best = ocp.CheckpointManager(
          os.path.join(self.workdir, "checkpoints_best"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True,
              best_fn=lambda m: sign * float(m[best_metric]) if best_metric in m else float("inf"),
              best_mode="min", keep_checkpoints_without_metrics=False, **opts),
          item_names=("state", "meta"))

  # ------------------------------------------------------------------ save
  def save(self, step: int, state, metrics: Optional[Dict[str, float]] = None,
           config_json: Optional[str] = None, force: bool = False):
    bad = _all_finite(state)
    if bad is not None:
      raise NonFiniteStateError(f"refusing to checkpoint step {step}: non-finite values in {bad}")
    meta = {"step": int(step), "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "config": config_json}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    self.latest.save(step, args=args, force=force)
    if self.best is not None and metrics and self.best_metric in metrics:
      self.best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          metrics={self.best_metric: float(metrics[self.best_metric])}, force=True)

  # --------------------------------------------------------------- restore
  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def restore(self, abstract_state, step: Optional[int] = None, best: bool = False):
    mgr = self.best if best else self.latest
    if mgr is None:
      raise ValueError("no best-checkpoint manager (config.training.best_metric is empty)")
    step = mgr.best_step() if best else (mgr.latest_step() if step is None else step)
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {mgr.directory}")
    restored = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    logging.info("restored step %d from %s", step, mgr.directory)
    return restored["state"], restored["meta"]

  def wait(self):
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self):
    self.wait()
    self.latest.close()
    if self.best is not None:
      self.best.close()


def has_checkpoint(workdir: str) -> bool:
  d = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(d):
    return False
  return any(n.isdigit() and os.path.isdir(os.path.join(d, n)) for n in os.listdir(d))


def save_params(directory: str, params: Any, meta: Dict[str, Any]):
  """A standalone params checkpoint (e.g. a pretrained DDPM): ``params`` + ``meta.json``."""
  directory = os.path.abspath(directory)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, "params"), params, force=True)
  ckptr.wait_until_finished()
  tmp = os.path.join(directory, "meta.json.tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, os.path.join(directory, "meta.json"))


def load_params(directory: str, abstract=None):
  directory = os.path.abspath(directory)
  ckptr = ocp.StandardCheckpointer()
  params = ckptr.restore(os.path.join(directory, "params"), abstract)
  meta_path = os.path.join(directory, "meta.json")
  meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
  return params, meta
