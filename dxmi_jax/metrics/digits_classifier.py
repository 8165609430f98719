"""A digits "FID": Fréchet distance, precision/recall and class coverage in a small classifier's features.

The Inception network of FID knows nothing about 8x8 grey digits, so for the digits experiment
we train our own feature extractor: a small CNN classifier on the digits *train* split
(``dxmi_jax.data.digits``, 1,442 images).  Its penultimate activations (64-d) play the role of
Inception's pool3 features:

* ``fd``: ``metrics.fid.frechet_distance`` between the Gaussian statistics of the sample features
  and of the reference features (the 355-image *test* split by default);
* ``precision`` / ``recall``: ``metrics.precision_recall.precision_recall`` (k = 3) against the
  reference features;
* ``class_hist``: the fraction of samples the classifier assigns to each digit (mode coverage),
  ``class_tv``: its total-variation distance from the reference split's class frequencies,
  ``min_class_frac``: the rarest class's fraction.

Network: conv3x3(32) - swish - conv3x3(64) - swish - avgpool 2x2 - dense(64) - swish [features]
- dense(10).  Swish rather than ReLU so that no feature is identically zero (a dead unit would
make both covariances singular).  Training is deterministic: PRNGKey(0) initialisation, Adam
1e-3, 30 epochs of batch 64 in an order from ``numpy.random.default_rng(0)``, each image shifted
by a random -1..1 pixels in each direction (background fill), which makes the features tolerant
of the small misplacements generated digits show.  On 2 CPU cores it takes ~10 s; the weights
are cached in ``<cache_dir>/digits_classifier_<hash>.npz`` (``cache_dir``: the argument, else
``$DXMI_CACHE_DIR``, else ``~/.cache/dxmi_jax``); the hash covers the training recipe, so a
changed recipe never reads stale weights.  Floating-point differences between machines can
change the trained weights in the last bits, so compare numbers computed with one cached
classifier.

Inputs are uint8 NHWC ``(N, 8, 8, 1)`` images (what ``image_export.to_uint8`` gives), mapped to
[-1, 1] exactly as the data loader maps the training images.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dxmi_jax import io
from dxmi_jax.data import digits as digits_data
from dxmi_jax.metrics import features as features_lib
from dxmi_jax.metrics import fid as fid_lib
from dxmi_jax.metrics import precision_recall as pr_lib

NUM_CLASSES = 10
FEATURE_DIM = 64
IMAGE_SHAPE = (digits_data.NATIVE_SIZE, digits_data.NATIVE_SIZE, 1)

#: everything that determines the trained weights (part of the cache file's name)
RECIPE = dict(
  version=1, widths=(32, 64), feature_dim=FEATURE_DIM, lr=1e-3, epochs=30, batch=64, shift=1, seed=0, split="train"
)


class DigitsCNN(nn.Module):
  """The classifier; ``__call__`` returns (logits (N, 10), penultimate features (N, 64))."""

  widths: tuple = (32, 64)
  feature_dim: int = FEATURE_DIM

  @nn.compact
  def __call__(self, x):
    h = nn.swish(nn.Conv(self.widths[0], (3, 3), padding="SAME", name="conv1")(x))
    h = nn.swish(nn.Conv(self.widths[1], (3, 3), padding="SAME", name="conv2")(h))
    h = nn.avg_pool(h, (2, 2), (2, 2))
    feats = nn.swish(nn.Dense(self.feature_dim, name="fc")(h.reshape(h.shape[0], -1)))
    return nn.Dense(NUM_CLASSES, name="head")(feats), feats


def to_float(images_uint8: Any) -> np.ndarray:
  """uint8 (N, 8, 8, 1) -> float32 [-1, 1] (the data loader's mapping x / 127.5 - 1)."""
  x = np.asarray(images_uint8)
  if x.dtype != np.uint8:
    raise features_lib.EvaluationInputError(
      f"digits metric: expected uint8 images (use image_export.to_uint8 first), got dtype {x.dtype}"
    )
  if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
    raise features_lib.EvaluationInputError(f"digits metric: expected images of shape (N, 8, 8, 1), got {x.shape}")
  return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _shift(x: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
  """Each image moved by (dy, dx) in [-max_shift, max_shift]^2, background (-1) shifted in."""
  n, h, w, _ = x.shape
  m = max_shift
  padded = np.pad(x, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)
  dy = rng.integers(0, 2 * m + 1, size=n)
  dx = rng.integers(0, 2 * m + 1, size=n)
  rows = dy[:, None] + np.arange(h)[None, :]
  cols = dx[:, None] + np.arange(w)[None, :]
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def train_classifier(recipe: Optional[Dict] = None) -> Dict:
  """Trains the classifier on the digits train split (deterministic); returns its params."""
  r = dict(RECIPE, **(recipe or {}))
  images, labels = digits_data.digits_arrays(r["split"], digits_data.NATIVE_SIZE)
  x_all, y_all = to_float(images), labels.astype(np.int32)
  model = DigitsCNN(tuple(r["widths"]), r["feature_dim"])
  params = model.init(jax.random.PRNGKey(r["seed"]), jnp.zeros((1,) + IMAGE_SHAPE))["params"]
  tx = optax.adam(r["lr"])
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rng = np.random.default_rng(r["seed"])
  n, b = x_all.shape[0], r["batch"]
  for _ in range(r["epochs"]):
    order = rng.permutation(n)
    for i in range(n // b):  # drop the last partial batch: one compiled shape
      idx = order[i * b : (i + 1) * b]
      x = _shift(x_all[idx], rng, r["shift"]) if r["shift"] else x_all[idx]
      params, opt_state = step(params, opt_state, jnp.asarray(x), jnp.asarray(y_all[idx]))
  return jax.device_get(params)


def _cache_path(cache_dir: Optional[str]) -> str:
  folder = cache_dir or os.environ.get("DXMI_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dxmi_jax")
  digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(folder, f"digits_classifier_{digest}.npz")


def _flatten(params) -> Dict[str, np.ndarray]:
  return {
    "/".join(k): np.asarray(v)
    for k, v in (
      (tuple(str(getattr(p, "key", p)) for p in path), v) for path, v in jax.tree_util.tree_flatten_with_path(params)[0]
    )
  }


def _unflatten(flat: Dict[str, np.ndarray]) -> Dict:
  out: Dict = {}
  for key, v in flat.items():
    node = out
    parts = key.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = jnp.asarray(v)
  return out


class DigitsClassifier:
  """The trained classifier: features, predictions, and the digits metric against a reference."""

  def __init__(self, params):
    self.params = params
    self.model = DigitsCNN(tuple(RECIPE["widths"]), RECIPE["feature_dim"])
    self._apply = jax.jit(lambda p, x: self.model.apply({"params": p}, x))

  @classmethod
  def load_or_train(cls, cache_dir: Optional[str] = None) -> "DigitsClassifier":
    """Reads the cached weights, or trains them (seconds) and caches them atomically."""
    path = _cache_path(cache_dir)
    if os.path.exists(path):
      with np.load(path) as z:
        return cls(_unflatten(dict(z)))
    params = train_classifier()
    io.atomic_savez(path, **_flatten(params))
    return cls(params)

  def logits_and_features(self, images_uint8: Any, batch_size: int = 1000):
    x = to_float(images_uint8)
    logits, feats = [], []
    for i in range(0, x.shape[0], batch_size):
      chunk = x[i : i + batch_size]
      n = chunk.shape[0]
      if n < batch_size and x.shape[0] > batch_size:  # pad to one compiled shape
        chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + IMAGE_SHAPE, np.float32)])
      lg, ft = self._apply(self.params, jnp.asarray(chunk))
      logits.append(np.asarray(lg)[:n])
      feats.append(np.asarray(ft)[:n])
    return np.concatenate(logits), np.concatenate(feats)

  def features(self, images_uint8: Any) -> np.ndarray:
    return self.logits_and_features(images_uint8)[1]

  def predict(self, images_uint8: Any) -> np.ndarray:
    return np.argmax(self.logits_and_features(images_uint8)[0], axis=1)

  def accuracy(self, split: str = "test") -> float:
    images, labels = digits_data.digits_arrays(split, digits_data.NATIVE_SIZE)
    return float(np.mean(self.predict(images) == labels))

  @functools.lru_cache(maxsize=4)
  def reference(self, split: str):
    """(features, class frequencies) of a digits split: the metric's reference."""
    images, labels = digits_data.digits_arrays(split, digits_data.NATIVE_SIZE)
    return self.features(images), np.bincount(labels, minlength=NUM_CLASSES) / labels.shape[0]

  def evaluate(self, images_uint8: Any, reference_split: str) -> Dict[str, Any]:
    """The digits metric of ``images_uint8`` against ``reference_split``; see the module docstring.

    The split has no default: model selection scores against "val", reported numbers against
    "test", and a caller must say which."""
    ref_feats, ref_freq = self.reference(reference_split)
    logits, feats = self.logits_and_features(images_uint8)
    return metric_from_features(feats, np.argmax(logits, axis=1), ref_feats, ref_freq)


def metric_from_features(feats, predicted, ref_feats, ref_class_freq) -> Dict[str, Any]:
  """FD, precision/recall and class coverage from precomputed features (see ``DigitsClassifier``)."""
  s, r = features_lib.RunningStatistics().update(feats), features_lib.RunningStatistics().update(ref_feats)
  fd = fid_lib.frechet_distance(s.mean, s.covariance, r.mean, r.covariance)
  pr = pr_lib.precision_recall(ref_feats, feats)
  hist = np.bincount(np.asarray(predicted), minlength=NUM_CLASSES) / len(predicted)
  return {
    "fd": fd,
    "precision": pr["precision"],
    "recall": pr["recall"],
    "class_hist": [float(v) for v in hist],
    "class_tv": float(0.5 * np.abs(hist - np.asarray(ref_class_freq)).sum()),
    "min_class_frac": float(hist.min()),
    "num_samples": int(len(predicted)),
  }


@functools.lru_cache(maxsize=2)
def default_classifier(cache_dir: Optional[str] = None) -> DigitsClassifier:
  """The process-wide classifier (trained once per cache directory)."""
  return DigitsClassifier.load_or_train(cache_dir)
