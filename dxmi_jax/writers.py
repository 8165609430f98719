"""Metric writers: metrics.jsonl (the contract), TensorBoard events, progress lines.

Only process 0 writes.  TensorBoard files come from tensorboardX, which needs
neither TensorFlow nor tensorboard (clu.metric_writers would need both);
``read_tensorboard_scalars`` reads them back the same way.
Per-step vectors (e.g. ``value/step`` of length T) are expanded into scalars
``value/step_0`` ... as the official trainers log them.

metrics.jsonl holds one JSON object per line: ``{"step": int, "kind": "train" |
"eval", <metric>: float or null (non-finite)}``.  Keys under ``perf/``
(iterations/s, ETA) are wall-clock measurements: they are the only fields that
legitimately differ between two runs of the same config, and ``comparable``
drops them.  After a resume the file holds exactly the records an uninterrupted
run would have written (``truncate_after`` removes what a killed run wrote past
its last checkpoint).
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import time
from typing import Dict, List, Optional, Tuple

import jax
import numpy as np
from absl import logging

from dxmi_jax import io

PERF_PREFIX = "perf/"


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


def comparable(record: Dict) -> Dict:
  """A record without its wall-clock (``perf/``) fields: what reproducibility is judged on."""
  return {k: v for k, v in record.items() if not k.startswith(PERF_PREFIX)}


def read_jsonl(path: str) -> List[Dict]:
  """The records of a metrics.jsonl; a torn last line (process killed mid-write) is dropped."""
  out = []
  if not os.path.exists(path):
    return out
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("%s: dropping an unreadable line (torn write?)", path)
  return out


class MetricWriter:
  """Appends JSON records to <workdir>/metrics.jsonl and scalars to TensorBoard.

  ``purge_step``: on resume, the first step that will be written again; TensorBoard
  then hides events at or after it from the interrupted run's event files.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, purge_step: Optional[int] = None):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
    if self.active and tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30, purge_step=purge_step)

  def truncate_after(self, step: int):
    """On resume: drop records of steps > ``step`` (written after the restored checkpoint)."""
    if not self.active or not os.path.exists(self.path):
      return
    records = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]
    io.atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

  def write(self, step: int, metrics: Dict[str, float], kind: str = "train"):
    if not self.active:
      return
    rec = {"step": int(step), "kind": kind}
    rec.update({k: (None if not math.isfinite(v) else v) if isinstance(v, float) else v for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(rec) + "\n")
      f.flush()
    if self._tb is not None:
      prefix = "" if kind == "train" else f"{kind}/"
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
          self._tb.add_scalar(prefix + k, v, step)

  def image(self, tag: str, image_hwc_uint8: np.ndarray, step: int):
    if self._tb is not None:
      self._tb.add_image(tag, image_hwc_uint8, step, dataformats="HWC")

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()
      self._tb = None


# ------------------------------------------------------------ TensorBoard reader
def _records(path: str):
  """The payloads of a TFRecord file (length, masked crc, data, masked crc), CRCs checked."""
  from tensorboardX.record_writer import masked_crc32c as masked  # pylint: disable=import-outside-toplevel

  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      if struct.unpack("<I", header[8:])[0] != masked(header[:8]):
        raise ValueError(f"{path}: corrupt record length")
      data, footer = f.read(length), f.read(4)
      if len(data) < length or len(footer) < 4:
        return  # a truncated last record (writer killed)
      if struct.unpack("<I", footer)[0] != masked(data):
        raise ValueError(f"{path}: corrupt record")
      yield data


def read_tensorboard_scalars(logdir: str) -> Dict[str, List[Tuple[int, float]]]:
  """{tag: [(step, value), ...]} from every event file in ``logdir``, oldest file first.

  Honours restarts as TensorBoard does: a SessionLog.START at step s (written by
  ``purge_step``) hides the earlier events at steps >= s.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

  out: Dict[str, List[Tuple[int, float]]] = {}
  for path in sorted(
    glob.glob(os.path.join(logdir, "events.out.tfevents.*")), key=lambda p: (int(os.path.basename(p).split(".")[3]), p)
  ):
    for data in _records(path):
      ev = event_pb2.Event.FromString(data)
      if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
        out = {k: [(s, v) for s, v in vs if s < ev.step] for k, vs in out.items()}
      if ev.HasField("summary"):
        for val in ev.summary.value:
          if val.HasField("simple_value"):
            out.setdefault(val.tag, []).append((int(ev.step), float(val.simple_value)))
  return out


# ------------------------------------------------------------------ progress
class Progress:
  """Iterations/s since the previous call, and the ETA at that rate.

  The first call after ``start`` only starts the clock: the steps before it include the compilation
  of the step function (seconds to minutes, against milliseconds a step), so a rate over them would
  predict an ETA many times too long.  It returns ``perf/startup_sec`` (compilation and those steps)
  instead; the rate and the ETA come from the second call on.
  """

  def __init__(self, total: int, start: int):
    self.total, self.t0, self.s0 = total, time.time(), start
    self.last_t, self.last_s = self.t0, start

  def __call__(self, step: int) -> Dict[str, float]:
    now = time.time()
    first = self.last_s == self.s0
    rate = (step - self.last_s) / max(now - self.last_t, 1e-9)
    self.last_t, self.last_s = now, step
    if first:
      return {"perf/startup_sec": now - self.t0}
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    return {"perf/iters_per_sec": rate, "perf/eta_sec": eta}


def log_line(step: int, total: int, metrics: Dict[str, float], keys=()) -> None:
  parts = [f"step {step}/{total}"]
  for k in keys:
    if k in metrics:
      parts.append(f"{k.split('/')[-1]}={metrics[k]:.4g}")
  if "perf/startup_sec" in metrics:
    parts.append(f"compiled and started in {metrics['perf/startup_sec']:.1f} s")
  if "perf/iters_per_sec" in metrics:
    parts.append(f"{metrics['perf/iters_per_sec']:.1f} it/s")
    eta = metrics.get("perf/eta_sec", float("nan"))
    if math.isfinite(eta):
      parts.append(f"ETA {eta / 60:.1f} min")
  logging.info("  ".join(parts))
