"""Metrics of the 2D experiment: sliced Wasserstein distance and energy AUC (reference §7.3).

* ``sliced_wasserstein``: SW_p = (E_theta W_p^p(theta^T X, theta^T Y))^(1/p) with
  ``num_projections`` directions uniform on the sphere (normalised Gaussians) and
  exact 1-D W_p between the sorted projections (equal sample sizes; unequal sizes
  are compared through their quantile functions at a common grid).
  Our protocol: p = 2, 1,000 projections, 10,000 samples per side, reported as the
  mean (and std) over several independent data draws: one draw's SW is noisy.
* ``energy_auc``: ROC-AUC of -E separating data (label 1) from uniform noise on a box
  (label 0), ``sklearn.metrics.roc_auc_score`` like the official ``roc_btw_arr``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def sorted_projections(x, num_projections: int = 1000, seed: int = 0) -> np.ndarray:
  """(n, num_projections) sorted 1-D projections of x on directions fixed by ``seed``.

  Sorting dominates the cost of SW; a fixed reference set is projected once and
  compared with many sample sets through ``sw_from_sorted``.
  """
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  rng = np.random.default_rng(seed)
  theta = rng.standard_normal((x.shape[1], num_projections))
  theta /= np.linalg.norm(theta, axis=0, keepdims=True)
  return np.sort(x @ theta, axis=0)


def sw_from_sorted(px, py, p: int = 2) -> float:
  """SW_p between two sets given by their sorted projections (same directions)."""
  if px.shape[1] != py.shape[1]:
    raise ValueError(f"sliced_wasserstein: {px.shape[1]} vs {py.shape[1]} projections")
  if px.shape[0] != py.shape[0]:
    n = max(px.shape[0], py.shape[0])
    q = (np.arange(n) + 0.5) / n
    px = np.quantile(px, q, axis=0, method="inverted_cdf")
    py = np.quantile(py, q, axis=0, method="inverted_cdf")
  wpp = np.mean(np.abs(px - py) ** p, axis=0)
  return float(np.mean(wpp) ** (1.0 / p))


def sliced_wasserstein(x, y, num_projections: int = 1000, p: int = 2, seed: int = 0) -> float:
  x = np.asarray(x).reshape(len(x), -1)
  y = np.asarray(y).reshape(len(y), -1)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"sliced_wasserstein: dimension mismatch {x.shape[1]} vs {y.shape[1]}")
  return sw_from_sorted(sorted_projections(x, num_projections, seed), sorted_projections(y, num_projections, seed), p)


def uniform_box(n: int, dim: int, low: float = -4.0, high: float = 4.0, seed: int = 0):
  return np.random.default_rng(seed).uniform(low, high, size=(n, dim)).astype(np.float32)


def auc(score_data, score_noise) -> float:
  """ROC-AUC with data labelled 1: the probability a data point outscores a noise point."""
  s = np.concatenate([np.asarray(score_data, np.float64), np.asarray(score_noise, np.float64)])
  labels = np.concatenate([np.ones(len(score_data)), np.zeros(len(score_noise))])
  if not np.all(np.isfinite(s)):
    raise ValueError("auc: non-finite scores")
  return float(roc_auc_score(labels, s))
