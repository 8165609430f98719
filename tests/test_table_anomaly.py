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
  md = ta.markdown(table, means, ta.claims(table, tasks, rows), methods, dict(META, seeds=2, fmnist_seeds=2))
  assert "| **mean, fmnist** (1 of 2 finished) | **0.500** |" in md and md.count("—") >= 2


def test_sign_test(ta):
  assert ta.sign_test(5, 5) == 1.0 and ta.sign_test(0, 0) == 1.0
  assert ta.sign_test(9, 1) == pytest.approx(22 / 1024)  # 2 x (C(10,9) + C(10,10)) / 2^10
  assert ta.sign_test(1, 9) == ta.sign_test(9, 1)
  assert ta.sign_test(10, 0) == pytest.approx(2 / 1024)


def test_claims_pair_the_seeds_of_each_dataset(ta):
  tasks = [ta.Task("classical/a", "classical", []), ta.Task("classical/b", "classical", [])]
  methods = ("dxmi", "ae_only")
  # a: DxMI wins seed 0 by 0.1 and loses seed 1 by 0.02 (its mean is higher); b: a tie on seed 0, a win on seed 1
  rows = {
    ("classical/a", "dxmi"): {"auroc": [0.9, 0.6], "auprc": [0.5, 0.5]},
    ("classical/a", "ae_only"): {"auroc": [0.8, 0.62], "auprc": [0.5, 0.5]},
    ("classical/b", "dxmi"): {"auroc": [0.7, 0.75], "auprc": [0.5, 0.5]},
    ("classical/b", "ae_only"): {"auroc": [0.7, 0.7], "auprc": [0.5, 0.5]},
  }
  table, means = ta.summarise(rows, tasks, methods)
  c = ta.claims(table, tasks, rows)["classical"]
  assert set(c) == {"DxMI above the autoencoder alone"}  # the other claims' methods are absent
  v = c["DxMI above the autoencoder alone"]
  assert (v["wins"], v["of"]) == (2, 2)
  assert (v["seed_wins"], v["seed_pairs"]) == (2, 4)  # the tie counts as a pair, not as a win
  assert v["mean_paired_diff"] == pytest.approx((0.1 - 0.02 + 0.0 + 0.05) / 4)
  assert v["sign_p"] == pytest.approx(ta.sign_test(2, 1))
  md = ta.markdown(table, means, {"classical": c}, methods, dict(META, seeds=2, fmnist_seeds=2))
  assert "| classical | DxMI above the autoencoder alone | 0.738 | 0.705 | 2 of 2 | 2 of 4 | +0.0325 | 1 |" in md
