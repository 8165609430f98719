"""The anomaly benchmark's bookkeeping: which methods a group's mean needs (synthetic rows, no training)."""

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def ta():
  return load_benchmark("table_anomaly")


META = {"rows_finished": 0, "rows_planned": 0, "machine": "test", "wall_minutes": 0.0, "command": "none"}


def _row(v):
  return {"auroc": [v, v], "auprc": [v, v]}


def test_group_means_need_the_methods_that_apply(ta):
  tasks = [
    ta.Task("fmnist/t-shirt", "fmnist", []),
    ta.Task("fmnist/trouser", "fmnist", []),
    ta.Task("classical/a", "classical", []),
  ]
  methods = ta.METHODS
  rows = {("fmnist/t-shirt", m): _row(0.5 + 0.01 * i) for i, m in enumerate(methods) if m != "ocsvm"}
  rows[("fmnist/trouser", "dxmi")] = _row(0.9)  # unfinished class: left out of the mean
  rows.update({("classical/a", m): _row(0.7) for m in methods if m != "ocsvm"})  # OCSVM missing: no mean
  table, means = ta.summarise(rows, tasks, methods)
  assert not ta.applies("fmnist", "ocsvm") and ta.applies("classical", "ocsvm")
  assert means["fmnist"]["n"] == 1 and means["fmnist"]["of"] == 2 and "ocsvm" not in means["fmnist"]
  assert means["fmnist"]["dxmi"]["auroc"] == pytest.approx(0.5)
  assert "classical" not in means
  md = ta.markdown(table, means, ta.claims(table, tasks), methods, dict(META, seeds=2, fmnist_seeds=2))
  assert "| **mean, fmnist** (1 of 2 finished) | **0.500** |" in md and md.count("—") >= 2
