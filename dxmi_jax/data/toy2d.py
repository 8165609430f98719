"""Vector data: the toy 2D densities of the paper (FFJORD conventions) and user .npy files.

Batches are a pure function of (seed, step) so a run resumes exactly from its step.

* ``8gaussians`` (reference §3c): 8 centres at radius 4, angles k*45 deg, each point
  centre + 0.5 N(0, I), everything divided by 1.414 (centre radius ~2.83, std ~0.354).
* ``2spirals``: two interleaved spirals (radius ~ sqrt(U) * 3 pi), scaled by 1/3, N(0, 0.1^2) jitter.
* ``checkerboard``: uniform on the black squares of a 4x4 board over [-4, 4]^2.
* ``npy``: an (N, D) float array from ``config.data.path``; batches are drawn by
  per-epoch permutations.
"""

from __future__ import annotations

import math
import os

import numpy as np
from scipy.special import logsumexp

SYNTHETIC = ("8gaussians", "2spirals", "checkerboard")
NAMES = SYNTHETIC + ("npy",)

_SCALE_8G = 1.414
_CENTRES_8G = 4.0 * np.array([(math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)) for k in range(8)])


def sample2d(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
  """n points of a named toy density, float32 (n, 2)."""
  if name == "8gaussians":
    idx = rng.integers(0, 8, size=n)
    pts = _CENTRES_8G[idx] + 0.5 * rng.standard_normal((n, 2))
    return (pts / _SCALE_8G).astype(np.float32)
  if name == "2spirals":
    half = n // 2
    r = np.sqrt(rng.random((n - half, 1))) * 540.0 * (2.0 * math.pi) / 360.0
    arm = np.hstack([-np.cos(r) * r + 0.5 * rng.random((n - half, 1)), np.sin(r) * r + 0.5 * rng.random((n - half, 1))])
    pts = np.vstack([arm, -arm[:half]]) / 3.0
    pts = pts + 0.1 * rng.standard_normal(pts.shape)
    return pts[rng.permutation(n)].astype(np.float32)
  if name == "checkerboard":
    x1 = rng.random(n) * 4.0 - 2.0
    x2 = rng.random(n) - rng.integers(0, 2, size=n) * 2.0 + (np.floor(x1) % 2)
    return (np.stack([x1, x2], 1) * 2.0).astype(np.float32)
  raise ValueError(f"config.data.name: unknown dataset {name!r}; expected one of {NAMES}")


def log_density_8gaussians(x: np.ndarray) -> np.ndarray:
  """The true, normalised log-density of ``8gaussians`` (mixture of 8 isotropic Gaussians)."""
  centres = _CENTRES_8G / _SCALE_8G
  std = 0.5 / _SCALE_8G
  d2 = np.sum((x[:, None, :] - centres[None]) ** 2, -1)
  return logsumexp(-d2 / (2 * std**2), axis=1) - math.log(8) - math.log(2 * math.pi * std**2)


def load_npy(path: str) -> np.ndarray:
  """Loads an (N, D) point file with one clear error for every way it can be wrong."""
  if not path:
    raise ValueError("config.data.path: required when config.data.name='npy' (an (N, D) .npy file)")
  if not os.path.isfile(path):
    raise ValueError(f"config.data.path: file not found: {path}")
  try:
    arr = np.load(path, allow_pickle=False)
  except Exception as e:  # numpy raises several types for corrupt files
    raise ValueError(f"config.data.path: {path} is not a readable .npy file ({e})") from e
  if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
    raise ValueError(
      f"config.data.path: {path} must hold an (N, D) array with N >= 2, got shape {getattr(arr, 'shape', None)}"
    )
  if not np.issubdtype(arr.dtype, np.number):
    raise ValueError(f"config.data.path: {path} must hold numbers, got dtype {arr.dtype}")
  arr = arr.astype(np.float32)
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"config.data.path: {path} contains NaN or Inf")
  return arr


class VectorData:
  """Deterministic batches of vector data: ``batch(step, size)`` depends on (seed, step) only."""

  def __init__(self, name: str, seed: int, path: str = ""):
    if name not in NAMES:
      raise ValueError(f"config.data.name: unknown dataset {name!r}; expected one of {NAMES}")
    self.name, self.seed = name, int(seed)
    self.points = load_npy(path) if name == "npy" else None

  @property
  def dim(self) -> int:
    return 2 if self.points is None else self.points.shape[1]

  def batch(self, step: int, size: int) -> np.ndarray:
    if self.points is None:
      return sample2d(self.name, size, np.random.default_rng((self.seed, 1, step)))
    n = self.points.shape[0]
    first, last = step * size, (step + 1) * size
    idx = np.concatenate(
      [np.random.default_rng((self.seed, 2, epoch)).permutation(n) for epoch in range(first // n, (last - 1) // n + 1)]
    )
    offset = first - (first // n) * n
    return self.points[idx[offset : offset + size]]

  def sample(self, n: int, seed: int) -> np.ndarray:
    """n reference points (held out from the training stream by the seed tag)."""
    if self.points is None:
      return sample2d(self.name, n, np.random.default_rng((self.seed, 3, seed)))
    rng = np.random.default_rng((self.seed, 3, seed))
    return self.points[rng.choice(self.points.shape[0], size=n, replace=self.points.shape[0] < n)]
