"""writers.py: metrics.jsonl (torn lines, truncation, a failed write), the TensorBoard reader, progress lines."""

import errno
import os

import pytest

from dxmi_jax import writers
from conftest import records


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
