"""Metric writers: metrics.jsonl (the contract), TensorBoard events, progress lines.

Only process 0 writes.  TensorBoard files come from tensorboardX, which needs
neither TensorFlow nor tensorboard (clu.metric_writers would need both).
Per-step vectors (e.g. ``value/step`` of length T) are expanded into scalars
``value/step_0`` ... as the official trainers log them.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, Optional

import jax
import numpy as np
from absl import logging


def flatten_metrics(metrics) -> Dict[str, float]:
  """{name: scalar or vector} -> {name: float}; vectors become name_0, name_1, ..."""
  out = {}
  for k, v in metrics.items():
    a = np.asarray(v)
    if a.ndim == 0:
      out[k] = float(a)
    else:
      for i, x in enumerate(a.reshape(-1)):
        out[f"{k}_{i}"] = float(x)
  return out


class MetricWriter:
  """Appends JSON records to <workdir>/metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
    if self.active and tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def truncate_after(self, step: int):
    """On resume: drop records of steps > ``step`` (written after the restored checkpoint)."""
    if not self.active or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(lines)
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: Dict[str, float], kind: str = "train"):
    if not self.active:
      return
    rec = {"step": int(step), "kind": kind}
    rec.update({k: (None if not math.isfinite(v) else v) if isinstance(v, float) else v
                for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(rec, sort_keys=False) + "\n")
      f.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def image(self, tag: str, image_hwc_uint8: np.ndarray, step: int):
    if self._tb is not None:
      self._tb.add_image(tag, image_hwc_uint8, step, dataformats="HWC")

  def close(self):
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


class Progress:
  """Iterations/s and ETA over a sliding window."""

  def __init__(self, total: int, start: int):
    self.total, self.t0, self.s0 = total, time.time(), start
    self.last_t, self.last_s = self.t0, start

  def __call__(self, step: int) -> Dict[str, float]:
    now = time.time()
    rate = (step - self.last_s) / max(now - self.last_t, 1e-9)
    self.last_t, self.last_s = now, step
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    return {"perf/iters_per_sec": rate, "perf/eta_sec": eta}


def log_line(step: int, total: int, metrics: Dict[str, float], keys=()) -> None:
  parts = [f"step {step}/{total}"]
  for k in keys:
    if k in metrics:
      parts.append(f"{k.split('/')[-1]}={metrics[k]:.4g}")
  if "perf/iters_per_sec" in metrics:
    parts.append(f"{metrics['perf/iters_per_sec']:.1f} it/s")
    eta = metrics.get("perf/eta_sec", float("nan"))
    if math.isfinite(eta):
      parts.append(f"ETA {eta / 60:.1f} min")
  logging.info("  ".join(parts))
