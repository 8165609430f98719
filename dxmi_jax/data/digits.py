"""scikit-learn's 8x8 handwritten digits as a small real image data set (CPU-sized experiments).

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 grey-scale digits (the UCI optdigits test set, bundled
with scikit-learn, no download) with 17 grey levels 0..16 and labels 0..9 (class sizes 174..183).

* Values: ``uint8 = round(x * 255 / 16)`` with NumPy's round-half-to-even; only x = 8 hits a half (127.5 -> 128),
  so the 17 levels become 0, 16, 32, 48, 64, 80, 96, 112, 128, 143, 159, 175, 191, 207, 223, 239, 255.
  The loader then maps them to [-1, 1] like every other image; 0 (background) becomes -1.
* Split: fixed and RNG-free, so it cannot change with a NumPy or scikit-learn version. Within each class, in the
  data set's order, every fifth example (within-class position 4, 9, 14, ...) is *test*, the rest *train*.
  That is stratified and spreads both splits evenly along the file's order.
  Sizes: test = sum over classes of floor(n_c / 5) = 355, train = 1,442.
  *val* is carved out of train for model selection, by the same kind of rule: within-class positions
  2, 12, 22, ... (every tenth example, never a test one); *fit* is train without val.  Sizes: val 181,
  fit 1,261.  A run that selects checkpoints on val trains on fit, so neither selection nor training
  ever sees test.
* Size: ``image_size=8`` keeps the native 8x8 (already a power of two; a UNet with two 2x downsamplings
  reaches 2x2). ``image_size=16`` (any larger size of the same parity) with ``resize="pad"`` (default) pads
  the background value 0 evenly on all sides, leaving every original pixel and the 17-level value set
  unchanged (the digit keeps its native scale, like MNIST's 20x20 digits in a 28x28 frame); ``resize="nearest"``
  instead repeats each pixel into an s x s block (``image_size = 8 * s``), which keeps the whole frame
  covered by the digit but makes the data exactly block-constant.
* Layout: HWC with one channel, ``(image_size, image_size, 1)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from dxmi_jax.data.images import ArraySource

NATIVE_SIZE = 8
GREY_LEVELS = 16  # values run 0..16
TEST_EVERY = 5  # every fifth example of each class is in the test split
VAL_EVERY, VAL_OFFSET = 10, 2  # within-class positions 2, 12, 22, ... form val (never test: 2 % 5 != 4)
SPLITS = ("train", "test", "fit", "val")
RESIZES = ("pad", "nearest")


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  return np.asarray(digits.images), np.asarray(digits.target)


def digits_split_indices(split: str) -> np.ndarray:
  """Indices into ``load_digits()`` of ``split`` ("train", "test", "fit" or "val"), ascending."""
  if split not in SPLITS:
    raise ValueError(f"digits split (config.data.split) must be one of {SPLITS}, got {split!r}")
  _, targets = _load()
  is_test = np.zeros(targets.shape[0], dtype=bool)
  is_val = np.zeros(targets.shape[0], dtype=bool)
  for c in np.unique(targets):
    members = np.flatnonzero(targets == c)
    is_test[members[TEST_EVERY - 1 :: TEST_EVERY]] = True
    is_val[members[VAL_OFFSET::VAL_EVERY]] = True
  chosen = {"test": is_test, "train": ~is_test, "val": is_val, "fit": ~is_test & ~is_val}[split]
  return np.flatnonzero(chosen)


def to_uint8(values: np.ndarray) -> np.ndarray:
  """Maps digit grey levels 0..16 to uint8 0..255: ``rint(x * 255 / 16)`` (half to even)."""
  return np.rint(np.asarray(values, dtype=np.float64) * (255.0 / GREY_LEVELS)).astype(np.uint8)


def digits_arrays(split: str, image_size: int = NATIVE_SIZE, *, resize: str = "pad") -> tuple[np.ndarray, np.ndarray]:
  """The ``split`` images as uint8 ``(N, image_size, image_size, 1)`` and labels as int64 ``(N,)``."""
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
    raise ValueError(f"digits image_size (config.data.image_size) must be an integer, got {image_size!r}")
  image_size = int(image_size)
  if resize not in RESIZES:
    raise ValueError(f"digits resize must be one of {RESIZES}, got {resize!r}")
  if image_size < NATIVE_SIZE:
    raise ValueError(f"digits image_size (config.data.image_size) must be >= {NATIVE_SIZE}, got {image_size}")
  indices = digits_split_indices(split)
  raw, targets = _load()
  images = to_uint8(raw[indices])
  if image_size != NATIVE_SIZE:
    if resize == "pad":
      if (image_size - NATIVE_SIZE) % 2:
        raise ValueError(
          f"digits image_size {image_size} with resize='pad' must be 8 + an even number "
          f"(e.g. 16) so the digit is centred"
        )
      m = (image_size - NATIVE_SIZE) // 2
      images = np.pad(images, ((0, 0), (m, m), (m, m)), constant_values=0)
    else:
      if image_size % NATIVE_SIZE:
        raise ValueError(f"digits image_size {image_size} with resize='nearest' must be a multiple of 8")
      s = image_size // NATIVE_SIZE
      images = np.repeat(np.repeat(images, s, axis=1), s, axis=2)
  return np.ascontiguousarray(images[..., None]), targets[indices].astype(np.int64)


def digits_source(split: str, image_size: int = NATIVE_SIZE, *, resize: str = "pad") -> ArraySource:
  """A random-access source (``{"image": uint8 (S, S, 1), "label": 0..9}``) over the digits ``split``.

  Args:
    split: "train" (1,442 images), "test" (355), or train's two parts "fit" (1,261) and "val" (181);
      see the module docstring for the rule.
    image_size: 8 (native) or larger, e.g. 16 (``config.data.image_size``).
    resize: how to reach ``image_size`` > 8: "pad" (default) or "nearest".
  """
  images, labels = digits_arrays(split, image_size, resize=resize)
  return ArraySource(images, labels)
