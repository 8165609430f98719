"""Detection metrics: anomaly = positive class, higher score = more anomalous."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def auroc(labels, scores) -> float:
  scores = np.asarray(scores, np.float64)
  if not np.all(np.isfinite(scores)):
    return float("nan")
  return float(roc_auc_score(np.asarray(labels).reshape(-1), scores.reshape(-1)))


def auprc(labels, scores) -> float:
  """Average precision (the step-wise area under the precision-recall curve)."""
  scores = np.asarray(scores, np.float64)
  if not np.all(np.isfinite(scores)):
    return float("nan")
  return float(average_precision_score(np.asarray(labels).reshape(-1), scores.reshape(-1)))


def novelty_split(y, seed: int):
  """(train, test) indices: a seeded 70% of the normals train; the other normals and every
  anomaly test (``np.random.default_rng(seed).permutation`` of the indices where y == 0)."""
  rng = np.random.default_rng(seed)
  normals = rng.permutation(np.flatnonzero(np.asarray(y) == 0))
  n = int(0.7 * len(normals))
  return normals[:n], np.concatenate([normals[n:], np.flatnonzero(np.asarray(y) == 1)])
