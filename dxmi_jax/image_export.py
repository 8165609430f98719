"""Sample export: [-1, 1] float images -> uint8, npz files and PNG grids.

Two conversions exist in the official code, and they differ by about half a
grey level on average (reference §8.19):

* ``rounding="round"`` (CIFAR-10): ``x01 = clamp((x + 1) / 2, 0, 1)`` then
  torchvision ``save_image``'s ``floor(x01 * 255 + 0.5)``: round to nearest.
  The CIFAR training-time FID reads those PNGs back.
* ``rounding="truncate"`` (ImageNet-64 / LSUN npz files, guided-diffusion
  style): ``uint8(clip((x + 1) * 127.5, 0, 255))``: the float is truncated,
  which biases pixels down by ~0.5 levels.

Arithmetic is float32, in the official order of operations.  Samples are
clamped only here, never inside the sampling chain.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np

from dxmi_jax.io import atomic_write


class SampleExportError(ValueError):
  """Bad images handed to an exporter."""


def to_uint8(images: Any, rounding: str = "round") -> np.ndarray:
  """NHWC (or HWC) float images in [-1, 1] -> uint8 in [0, 255]; see module docstring."""
  x = np.asarray(images)
  if not np.issubdtype(x.dtype, np.floating):
    raise SampleExportError(f"to_uint8 expects float images in [-1, 1], got dtype {x.dtype}")
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise SampleExportError("images contain NaN or inf; refusing to export them as pixels")
  if rounding == "round":
    x01 = np.clip((x + np.float32(1)) / np.float32(2), 0, 1)
    return np.clip(np.floor(x01 * np.float32(255) + np.float32(0.5)), 0, 255).astype(np.uint8)
  if rounding == "truncate":
    return np.clip((x + np.float32(1)) * np.float32(127.5), 0, 255).astype(np.uint8)
  raise SampleExportError(f"rounding must be 'round' (CIFAR PNGs) or 'truncate' (ImageNet/LSUN npz), got {rounding!r}")


def _check_uint8_nhwc(images: Any, name: str) -> np.ndarray:
  arr = np.asarray(images)
  if arr.dtype != np.uint8:
    raise SampleExportError(f"{name}: expected uint8 images (use to_uint8 first), got {arr.dtype}")
  if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
    raise SampleExportError(f"{name}: expected NHWC with 1 or 3 channels, got shape {arr.shape}")
  if arr.shape[0] == 0:
    raise SampleExportError(f"{name}: no images to save")
  return arr


def save_samples_npz(path: Union[str, os.PathLike], images_uint8: Any, labels: Optional[Any] = None) -> None:
  """Writes ``arr_0`` (uint8 NHWC) and, if given, ``arr_1`` (int64 labels) atomically.

  This is the layout OpenAI's evaluator and ``python -m dxmi_jax.metrics``
  read.  The file is written to ``path`` exactly (no ``.npz`` appended).
  """
  images = _check_uint8_nhwc(images_uint8, "save_samples_npz")
  arrays = {"arr_0": images}
  if labels is not None:
    lab = np.asarray(labels)
    if lab.shape != (images.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
      raise SampleExportError(f"labels must be {images.shape[0]} integers, got {lab.dtype} {lab.shape}")
    arrays["arr_1"] = lab.astype(np.int64)
  atomic_write(path, lambda f: np.savez(f, **arrays), ".npz")


def make_grid(images_uint8: Any, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
  """torchvision ``make_grid`` layout: ``nrow`` images per row, ``padding`` px gaps.

  Like torchvision, a single image is returned as is, without padding.
  """
  images = _check_uint8_nhwc(images_uint8, "make_grid")
  if nrow < 1:
    raise SampleExportError(f"nrow must be >= 1, got {nrow}")
  n, h, w, c = images.shape
  if n == 1:
    return images[0]
  ncol = min(nrow, n)
  nrows = -(-n // ncol)
  hh, ww = h + padding, w + padding
  grid = np.full((nrows * hh + padding, ncol * ww + padding, c), pad_value, np.uint8)
  for i in range(n):
    r, q = divmod(i, ncol)
    grid[r * hh + padding : r * hh + padding + h, q * ww + padding : q * ww + padding + w] = images[i]
  return grid


def save_image_grid(path: Union[str, os.PathLike], images_uint8: Any, nrow: int = 8, padding: int = 2) -> None:
  """PNG grid of uint8 NHWC images (``nrow`` images per row), written atomically."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  grid = make_grid(images_uint8, nrow=nrow, padding=padding)
  img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  atomic_write(path, lambda f: img.save(f, format="PNG"), ".png")
