"""Anomaly-detection inputs: vector npz files, feature-map files, and the standardisation.

Vectors.  ``X`` (N, D) float in an ``.npz`` (the training samples, all normal).  Every way
such a file can be wrong (missing, unreadable, no ``X``, not 2-D, not numbers, NaN/Inf, wrong D)
raises ``ValueError`` with one line that names the option and the file, so the CLI prints
``error: ...`` before anything is written.

Standardisation.  Each feature is standardised with the *training* split's mean and std
(+1e-8, as ``../shared/tools/ad_baselines.py`` does).  The statistics travel with every
checkpoint (its JSON meta, key ``data_transform``), so ``--mode=score`` applies exactly the
transform the model was trained under, whatever data the user scores.

Feature maps (the paper's MVTec protocol, UniAD style).  One file per split with
``features`` (N, H, W, C) or (N, C, H, W), ``label`` (N,) 1 = anomalous, ``mask`` (N, h, w) pixel
ground truth (optional) and ``clsname`` (N,) category names; as ``.npz`` or as a pickle of a
dict with those keys (torch tensors are accepted if torch is installed).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from typing import Optional

import numpy as np

from dxmi_jax.data import toy2d

NPZ = "npz"


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


@dataclasses.dataclass
class Standardizer:
  """x -> (x - mean) / std, fitted on the training data (std gets +1e-8)."""

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

  @classmethod
  def from_json(cls, d: dict) -> "Standardizer":
    if not d or d.get("kind") != "standardize":
      raise ValueError(f"unknown data transform {d!r}")
    return cls(np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32))


class ArrayData(toy2d.VectorData):
  """toy2d.VectorData over an in-memory (already standardised) array: batches by (seed, step)."""

  def __init__(self, points: np.ndarray, seed: int):  # pylint: disable=super-init-not-called
    if points.ndim < 2 or points.shape[0] < 2:
      raise ValueError(f"need an (N, ...) array with N >= 2 training samples, got shape {points.shape}")
    self.name, self.seed, self.points = NPZ, int(seed), np.asarray(points, np.float32)


def vector_data(config):
  """(ArrayData of the standardised training file, its Standardizer) for config.data.name='npz'."""
  x = load_vectors(config.data.path)
  if x.shape[0] < 2:
    raise ValueError(f"config.data.path: {config.data.path} needs at least 2 rows, got {x.shape[0]}")
  transform = Standardizer.fit(x) if config.data.standardize else Standardizer.identity(x.shape[1])
  return ArrayData(transform(x), config.training.seed), transform


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
  """A UniAD-style feature file (.npz or pickle).  ``channels_last=None`` guesses the layout:
  (N, C, H, W) when axis 1 is larger than the last axis and H == W there."""
  if not os.path.isfile(path):
    raise ValueError(f"feature file not found: {path}")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=True) as z:
      raw = {k: z[k] for k in z.files}
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
  missing = [k for k in ("features", "label") if k not in raw]
  if missing:
    raise ValueError(f"{path}: missing {missing}; expected keys features, label, mask, clsname")
  feats = _as_numpy(raw["features"]).astype(np.float32)
  if feats.ndim != 4:
    raise ValueError(f"{path}: features must be 4-D (N, H, W, C) or (N, C, H, W), got {feats.shape}")
  if channels_last is None:
    channels_last = not (feats.shape[1] > feats.shape[-1] and feats.shape[2] == feats.shape[3])
  if not channels_last:
    feats = feats.transpose(0, 2, 3, 1)
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
