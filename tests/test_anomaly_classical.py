"""The scikit-learn baselines of the anomaly table: their scores, and which of them ignore the seed."""

import numpy as np
import pytest

from dxmi_jax.proj.anomaly import classical


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(200, 4))
  test = np.concatenate([rng.normal(size=(20, 4)), rng.normal(size=(20, 4)) + 4.0])
  return train, test


def test_knn_is_the_mean_distance_to_the_five_nearest(data):
  train, test = data
  d = np.sqrt(((test[:, None] - train[None]) ** 2).sum(-1))
  np.testing.assert_allclose(classical.scores("knn", train, test), np.sort(d, 1)[:, :5].mean(1), rtol=1e-10)


@pytest.mark.parametrize("method", classical.METHODS)
def test_far_points_score_higher(method, data):
  train, test = data
  s = classical.scores(method, train, test)
  assert s[20:].min() > s[:20].max(), method


def test_deterministic_methods_ignore_the_seed(data):
  train, test = data
  for method in classical.METHODS:
    a, b = (classical.scores(method, train, test, seed=s) for s in (0, 1))
    # the benchmark fits a method listed as deterministic once for seeds that share their data
    assert np.array_equal(a, b) == (method in classical.DETERMINISTIC), method


def test_unknown_method_names_the_choices():
  with pytest.raises(ValueError, match="iforest"):
    classical.scores("pca", np.zeros((3, 2)), np.zeros((1, 2)))
