"""Metric writers: metrics.jsonl (the contract), TensorBoard events, progress lines.

Only process 0 writes.  TensorBoard files are written by ``EventFile`` with tensorboardX's protos
(neither TensorFlow nor tensorboard needed; clu.metric_writers would need both), in
the calling thread, whole records only; ``read_tensorboard_scalars`` reads them back.
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


def _append_whole(path: str, data: bytes):
  """Appends ``data`` to ``path`` entirely or not at all: a failed write (e.g. a full disk) is cut back
  off, so the file never ends in a half-written line.  Raises the OSError."""
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    end = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    try:
      while view:
        view = view[os.write(fd, view) :]
    except OSError:
      os.ftruncate(fd, end)
      raise
  finally:
    os.close(fd)


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
      self._tb = EventFile(os.path.join(workdir, "tensorboard"), purge_step=purge_step)

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
    _append_whole(self.path, (json.dumps(rec) + "\n").encode("utf-8"))
    if self._tb is not None:
      prefix = "" if kind == "train" else f"{kind}/"
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
          self._tb.add_scalar(prefix + k, v, step)
      self._tb.flush()  # one append per record: on disk for a resume after a kill

  def image(self, tag: str, image_hwc_uint8: np.ndarray, step: int):
    if self._tb is not None:
      self._tb.add_image(tag, image_hwc_uint8, step, dataformats="HWC")
      self._tb.flush()

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self, quiet: bool = False):
    """Writes the TensorBoard events still held and closes.  If that fails (e.g. the disk is full)
    the events file keeps only whole events and the error is raised (not with ``quiet``: when
    closing after another error, which is the one to report)."""
    if self._tb is None:
      return
    tb, self._tb = self._tb, None
    try:
      tb.close()
    except OSError:
      if not quiet:
        raise


class EventFile:
  """TensorBoard events (the TFRecord files TensorBoard reads), written by the calling thread.

  Not tensorboardX's SummaryWriter: its writer thread dies on a write error (a full disk)
  and the next ``add_scalar`` then blocks forever on its full queue.  Here events are
  serialised with tensorboardX's summary protos, held, and appended at each ``flush``
  (MetricWriter: once per record), whole or not at all (``_append_whole``): a failed
  write raises here, in the loop, and leaves no torn record.  ``purge_step`` marks a restart as
  SummaryWriter's does (TensorBoard hides older events at steps >= it).
  """

  def __init__(self, logdir: str, purge_step: Optional[int] = None):
    import socket  # pylint: disable=import-outside-toplevel

    os.makedirs(logdir, exist_ok=True)
    trim_torn_events(logdir)  # a run killed mid-append (SIGKILL) may have left half a record
    self.logdir = logdir
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}")
    self._held: List[bytes] = []
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

    self._event(file_version="brain.Event:2", step=purge_step or 0)
    if purge_step is not None:
      self._event(step=purge_step, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
    self.flush()

  def _event(self, **fields):
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    from tensorboardX.record_writer import masked_crc32c as masked  # pylint: disable=import-outside-toplevel

    data = event_pb2.Event(wall_time=time.time(), **fields).SerializeToString()
    header = struct.pack("<Q", len(data))
    self._held.append(header + struct.pack("<I", masked(header)) + data + struct.pack("<I", masked(data)))

  def add_scalar(self, tag: str, value: float, step: int):
    from tensorboardX import summary  # pylint: disable=import-outside-toplevel

    self._event(step=int(step), summary=summary.scalar(tag, float(value)))

  def add_image(self, tag: str, image, step: int, dataformats: str = "HWC"):
    from tensorboardX import summary  # pylint: disable=import-outside-toplevel

    self._event(step=int(step), summary=summary.image(tag, image, dataformats=dataformats))

  def flush(self):
    if self._held:
      _append_whole(self.path, b"".join(self._held))
      self._held = []

  def close(self):
    self.flush()


def trim_torn_events(logdir: str):
  """Cuts a torn last record (a write cut short: full disk, killed process) off each event file in ``logdir``."""
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    end, size = _complete_length(path), os.path.getsize(path)
    if end < size:
      with open(path, "r+b") as f:
        f.truncate(end)
      logging.warning("%s: cut a torn last event (%d bytes)", path, size - end)


# ------------------------------------------------------------ TensorBoard reader
def _records(path: str, offsets: bool = False):
  """The payloads of a TFRecord file (length, masked crc, data, masked crc), CRCs checked;
  with ``offsets``, (payload, end offset of its record)."""
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
      yield (data, f.tell()) if offsets else data


def _complete_length(path: str) -> int:
  """The length of the leading complete records of an event file."""
  complete = 0
  try:
    for _, end in _records(path, offsets=True):
      complete = end
  except ValueError:  # a corrupt record: keep what precedes it
    pass
  return complete


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
