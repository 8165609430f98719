"""Anomaly-detection inputs: vector npz files, feature-map files, and the standardisation.

Vectors.  ``X`` (N, D) float in an ``.npz`` (the training samples, all normal).  Every way
such a file can be wrong (missing, unreadable, no ``X``, not 2-D, not numbers, NaN/Inf, wrong D)
raises ``ValueError`` with one line that names the option and the file, so the CLI prints
``error: ...`` before anything is written.

Standardisation.  Each feature is standardised with the *training* split's mean and std
(+1e-8, as the sklearn baselines of the benchmark do).  The transform travels with every
checkpoint (its JSON meta, key ``data_transform``), so ``--mode=score`` applies exactly the
transform the model was trained under, whatever data the user scores.

Feature maps (the paper's MVTec protocol, UniAD style).  One file per split with
``feature_align`` (N, C, H, W) (or ``features``, (N, H, W, C) or (N, C, H, W)), ``label`` (N,)
1 = anomalous, ``mask`` (N, h, w) pixel ground truth (optional) and ``clsname`` (N,) category
names; as ``.npz`` or as a pickle of a dict with those keys (torch tensors are accepted if
torch is installed).  ``config.data.name=uniad`` trains on every location of the normal maps
as one C-dimensional vector.

Normalisation (``config.data.normalize``): ``zscore`` (tables), ``sphere`` (features: each
vector onto the unit sphere, as the authors do) or ``none``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Optional

import numpy as np

from dxmi_jax.data import toy2d

NPZ = "npz"
UNIAD = "uniad"


def load_vectors(path: str, what: str = "config.data.path", key: str = "X", dim: Optional[int] = None):
  """(N, D) float32 from ``path[key]``; ``dim``: the D it must have."""
  if not path:
    raise ValueError(f"{what}: required (an .npz file holding {key!r}, an (N, D) float array)")
  if not os.path.isfile(path):
    raise ValueError(f"{what}: file not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as z:
      if key not in z.files:
        raise ValueError(f"{what}: {path} has no array {key!r} (it holds {sorted(z.files)})")
      arr = z[key]
  except ValueError:
    raise
  except Exception as e:  # zipfile / pickle / OS errors of a corrupt file
    raise ValueError(f"{what}: {path} is not a readable .npz file ({type(e).__name__}: {e})") from None
  if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
    raise ValueError(f"{what}: {path}[{key!r}] must be an (N, D) array, got shape {arr.shape}")
  if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
    raise ValueError(f"{what}: {path}[{key!r}] must hold numbers, got dtype {arr.dtype}")
  if dim is not None and arr.shape[1] != dim:
    raise ValueError(f"{what}: {path}[{key!r}] has D={arr.shape[1]} features per row; the model was trained on D={dim}")
  arr = arr.astype(np.float32)
  bad = ~np.isfinite(arr)
  if bad.any():
    row = int(np.argwhere(bad)[0][0])
    raise ValueError(f"{what}: {path}[{key!r}] contains NaN or Inf ({int(bad.sum())} values, first in row {row})")
  return arr


NORMALIZATIONS = ("zscore", "sphere", "none")


@dataclasses.dataclass
class Standardizer:
  """x -> (x - mean) / std, fitted on the training data (std gets +1e-8): ``normalize="zscore"``."""

  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, x: np.ndarray, axis=0) -> "Standardizer":
    x = np.asarray(x, np.float64)
    return cls(x.mean(axis).astype(np.float32), (x.std(axis) + 1e-8).astype(np.float32))

  @classmethod
  def identity(cls, dim: int) -> "Standardizer":
    return cls(np.zeros((dim,), np.float32), np.ones((dim,), np.float32))

  def __call__(self, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)

  def to_json(self) -> dict:
    return {"kind": "standardize", "mean": self.mean.tolist(), "std": self.std.tolist()}


@dataclasses.dataclass
class SphereProjection:
  """x -> x / |x| (each row onto the unit sphere; nothing fitted): ``normalize="sphere"``."""

  dim: int

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)

  def to_json(self) -> dict:
    return {"kind": "sphere", "dim": int(self.dim)}


def fit_transform(x: np.ndarray, normalize: str):
  """The input transform of ``config.data.normalize``, fitted on the training rows x (N, D)."""
  if normalize == "zscore":
    return Standardizer.fit(x)
  if normalize == "sphere":
    return SphereProjection(x.shape[1])
  if normalize == "none":
    return Standardizer.identity(x.shape[1])
  raise ValueError(f"config.data.normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")


def transform_from_json(d: dict):
  """The transform a checkpoint carries (its meta's ``data_transform``)."""
  kind = (d or {}).get("kind")
  if kind == "standardize":
    return Standardizer(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))
  if kind == "sphere":
    return SphereProjection(int(d["dim"]))
  raise ValueError(f"unknown data transform {d!r}")


class ArrayData(toy2d.VectorData):
  """toy2d.VectorData over an in-memory (already transformed) array: batches by (seed, step)."""

  def __init__(self, points: np.ndarray, seed: int):  # pylint: disable=super-init-not-called
    if points.ndim < 2 or points.shape[0] < 2:
      raise ValueError(f"need an (N, ...) array with N >= 2 training samples, got shape {points.shape}")
    self.name, self.seed, self.points = NPZ, int(seed), np.asarray(points, np.float32)


def split_validation(x: np.ndarray, fraction: float, seed: int):
  """(fit rows, validation rows): a seeded ``fraction`` of the training rows held out for the
  training-only diagnostics (never a test split)."""
  n_val = int(round(fraction * x.shape[0]))
  if n_val == 0:
    return x, x[:0]
  perm = np.random.default_rng((seed, 7)).permutation(x.shape[0])
  return x[perm[n_val:]], x[perm[:n_val]]


def training_rows(config) -> np.ndarray:
  """The raw training rows of ``config.data``: an (N, D) ``npz`` file, or every location of a
  UniAD-style feature file (``uniad``: (N*H*W, C), optionally only ``config.data.classes``)."""
  if config.data.name == UNIAD:
    maps = load_feature_maps(config.data.path)
    classes = [c for c in config.data.classes.split(",") if c]
    keep = np.ones(len(maps.label), bool) if not classes else np.isin(maps.clsname, classes)
    if classes and not keep.any():
      raise ValueError(
        f"config.data.classes={config.data.classes!r}: none of these classes is in {config.data.path} "
        f"(it has {sorted(set(maps.clsname.tolist()))})"
      )
    keep &= maps.label == 0
    if not keep.any():
      raise ValueError(f"config.data.path: {config.data.path} has no normal (label 0) map to train on")
    f = maps.features[keep]
    return f.reshape(-1, f.shape[-1])
  return load_vectors(config.data.path)


def vector_data(config):
  """(ArrayData of the transformed fit rows, the transform, the transformed validation rows)."""
  x = training_rows(config)
  if x.shape[0] < 2:
    raise ValueError(f"config.data.path: {config.data.path} needs at least 2 rows, got {x.shape[0]}")
  fit_rows, val_rows = split_validation(x, config.data.val_fraction, config.training.seed)
  transform = fit_transform(x, config.data.normalize)  # every training row (no test data in it)
  return ArrayData(transform(fit_rows), config.training.seed), transform, transform(val_rows)


def diffuse(x: np.ndarray, noise_std: float, steps: int, sphere: bool, rng) -> np.ndarray:
  """x diffused by ``steps`` Gaussian moves of per-coordinate std noise_std / sqrt(steps).

  On the sphere each move follows the great circle of its tangent component (the exponential
  map), so every intermediate point stays on the sphere; otherwise x + N(0, noise_std^2 I).
  """
  x = np.asarray(x, np.float32)
  if noise_std <= 0:
    return x
  if not sphere:
    return (x + noise_std * rng.standard_normal(x.shape)).astype(np.float32)
  s = noise_std / np.sqrt(steps)
  for _ in range(steps):
    v = s * rng.standard_normal(x.shape)
    v -= np.sum(v * x, -1, keepdims=True) * x
    n = np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    x = np.cos(n) * x + np.sin(n) * v / n
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
  return x.astype(np.float32)


# ------------------------------------------------------------------ feature maps
@dataclasses.dataclass
class FeatureMaps:
  features: np.ndarray  # (N, H, W, C) float32
  label: np.ndarray  # (N,) int, 1 = anomalous
  mask: Optional[np.ndarray]  # (N, h, w) {0, 1} or None
  clsname: np.ndarray  # (N,) str


def _as_numpy(v):
  if hasattr(v, "detach"):  # a torch tensor
    v = v.detach().cpu().numpy()
  return np.asarray(v)


def load_feature_maps(path: str, channels_last: Optional[bool] = None) -> FeatureMaps:
  """A UniAD-style feature file (.npz or pickle).

  The grid is ``feature_align`` (N, C, H, W), as the authors' UniAD fork saves it, or
  ``features`` as one 4-D array, (N, C, H, W) or (N, H, W, C) (UniAD's own ``features`` is a
  list of stage maps: align them first).  ``channels_last=None`` guesses the layout of
  ``features``: (N, C, H, W) when axis 1 is larger than the last axis and H == W there.
  """
  if not os.path.isfile(path):
    raise ValueError(f"feature file not found: {path}")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=True) as z:
        raw = {k: z[k] for k in z.files}
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
  else:
    try:
      with open(path, "rb") as f:
        raw = pickle.load(f)
    except Exception as e:  # pylint: disable=broad-except
      try:
        import torch  # pylint: disable=import-outside-toplevel

        raw = torch.load(path, map_location="cpu", weights_only=False)
      except Exception:  # pylint: disable=broad-except
        raise ValueError(f"{path}: neither an .npz nor a readable pickle ({e})") from None
  grid = "feature_align" if "feature_align" in raw else "features"
  missing = [k for k in (grid, "label") if k not in raw]
  if missing:
    raise ValueError(f"{path}: missing {missing}; expected feature_align (or features), label, mask, clsname")
  try:
    feats = _as_numpy(raw[grid]).astype(np.float32)
  except (TypeError, ValueError):
    raise ValueError(f"{path}: {grid} is not one array (UniAD's list of stage maps must be aligned first)") from None
  if feats.ndim != 4:
    raise ValueError(f"{path}: {grid} must be 4-D (N, C, H, W) or (N, H, W, C), got {feats.shape}")
  if grid == "feature_align":
    channels_last = False if channels_last is None else channels_last
  elif channels_last is None:
    channels_last = not (feats.shape[1] > feats.shape[-1] and feats.shape[2] == feats.shape[3])
  if not channels_last:
    feats = feats.transpose(0, 2, 3, 1)
  if not np.all(np.isfinite(feats)):
    raise ValueError(f"{path}: {grid} contains NaN or Inf")
  label = _as_numpy(raw["label"]).astype(np.int64).reshape(-1)
  mask = raw.get("mask")
  if mask is not None:
    mask = _as_numpy(mask).astype(np.float32)
    if mask.ndim == 4:  # (N, 1, h, w) or (N, h, w, 1)
      mask = mask[:, 0] if mask.shape[1] == 1 else mask[..., 0]
    mask = (mask > 0.5).astype(np.uint8)
  clsname = np.asarray(raw.get("clsname", ["all"] * len(label))).astype(str)
  if not len(label) == feats.shape[0] == len(clsname) or (mask is not None and len(mask) != len(label)):
    raise ValueError(f"{path}: features, label, mask and clsname disagree on N")
  return FeatureMaps(feats, label, mask, clsname)
