"""Classical novelty detectors (scikit-learn) on standardised features: higher = more anomalous.

The four baselines that come with the benchmark's ADBench data (benchmarks/data/adbench/README.md),
with the same settings: IsolationForest (defaults, random_state=seed), LOF (novelty=True, defaults: 20 neighbours),
kNN (mean Euclidean distance to the 5 nearest training points) and OCSVM (rbf, gamma="scale").
"""

from __future__ import annotations

import numpy as np

METHODS = ("iforest", "lof", "knn", "ocsvm")
DETERMINISTIC = ("lof", "knn", "ocsvm")  # the seed plays no part in their scores


def scores(method: str, train: np.ndarray, test: np.ndarray, seed: int = 0) -> np.ndarray:
  from sklearn.ensemble import IsolationForest  # pylint: disable=import-outside-toplevel
  from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors  # pylint: disable=import-outside-toplevel
  from sklearn.svm import OneClassSVM  # pylint: disable=import-outside-toplevel

  if method == "iforest":
    return -IsolationForest(random_state=seed).fit(train).score_samples(test)
  if method == "lof":
    return -LocalOutlierFactor(novelty=True).fit(train).score_samples(test)
  if method == "knn":
    dist, _ = NearestNeighbors(n_neighbors=5).fit(train).kneighbors(test)
    return dist.mean(1)
  if method == "ocsvm":
    return -OneClassSVM(gamma="scale").fit(train).score_samples(test)
  raise ValueError(f"unknown classical method {method!r}; expected one of {METHODS}")
