"""Synthetic anomaly-detection data made by the tests (and for development checks).

Vectors: normals on a noisy low-dimensional manifold in D dimensions (a 2-D latent mixture of
4 Gaussians pushed through a fixed random linear map, plus small isotropic noise); anomalies
are normals with a random subset of features displaced by ``shift`` standard deviations, i.e.
points off the manifold.  Feature maps: i.i.d. smooth normal maps with anomalous square
patches (a planted offset pattern) and the matching pixel masks.
"""

from __future__ import annotations

import numpy as np


def vectors(n_normal: int, n_anomal: int, dim: int, seed: int = 0, shift: float = 3.0):
  """(X (N, D) float32, y (N,) 1 = anomaly), normals first."""
  rng = np.random.default_rng(seed)
  mix = np.random.default_rng(1234)  # the same manifold for every seed
  proj = mix.standard_normal((2, dim))
  centres = mix.standard_normal((4, 2)) * 2.0

  def normal(n):
    z = centres[rng.integers(0, 4, n)] + 0.3 * rng.standard_normal((n, 2))
    return z @ proj + 0.1 * rng.standard_normal((n, dim))

  x_n = normal(n_normal)
  x_a = normal(n_anomal)
  scale = x_n.std(0)
  hit = rng.random((n_anomal, dim)) < 0.5
  hit[np.arange(n_anomal), rng.integers(0, dim, n_anomal)] = True
  x_a = x_a + hit * rng.choice([-1.0, 1.0], (n_anomal, dim)) * shift * scale
  x = np.concatenate([x_n, x_a]).astype(np.float32)
  return x, np.r_[np.zeros(n_normal), np.ones(n_anomal)].astype(np.int64)


def feature_maps(
  n_normal: int,
  n_anomal: int,
  hw: int = 8,
  channels: int = 8,
  mask_size: int = 32,
  seed: int = 0,
  patch: int = 2,
  strength: float = 3.0,
):
  """(features (N, hw, hw, C), label (N,), mask (N, mask_size, mask_size)), normals first.

  Normal maps: per-location features = a smooth random field mixed by a fixed channel map.
  Anomalous maps: one ``patch`` x ``patch`` square gets a fixed off-distribution offset pattern.
  """
  rng = np.random.default_rng(seed)
  mix = np.random.default_rng(4321).standard_normal((3, channels))
  pattern = np.random.default_rng(99).standard_normal(channels)
  pattern = strength * pattern / np.linalg.norm(pattern) * np.sqrt(channels)
  n = n_normal + n_anomal
  z = rng.standard_normal((n, hw + 2, hw + 2, 3))
  z = (z[:, :-2, :-2] + z[:, 1:-1, 1:-1] + z[:, 2:, 2:]) / np.sqrt(3.0)  # spatially smooth
  f = z @ mix + 0.1 * rng.standard_normal((n, hw, hw, channels))
  label = np.r_[np.zeros(n_normal), np.ones(n_anomal)].astype(np.int64)
  mask = np.zeros((n, mask_size, mask_size), np.uint8)
  up = mask_size // hw
  for i in range(n_normal, n):
    r, c = rng.integers(0, hw - patch + 1, 2)
    f[i, r : r + patch, c : c + patch] += pattern
    mask[i, r * up : (r + patch) * up, c * up : (c + patch) * up] = 1
  return f.astype(np.float32), label, mask
