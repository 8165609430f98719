"""Inception feature extraction (jitted, batch-sharded) and streaming statistics.

* :class:`ShardedBatchRunner` runs a jitted function on fixed-size batches that
  are split over all devices along a 1-D ``"data"`` mesh (``NamedSharding``).
  The last partial batch is zero-padded to the full batch (one compile) and the
  padding rows are dropped from the outputs.
* :class:`InceptionFeatureExtractor` feeds uint8 NHWC images through the FID
  Inception (``x / 255`` on device, as pytorch-fid's ``ToTensor``) and returns
  ``pool3`` (N, 2048) and ``logits_unbiased`` (N, 1008) as float32 numpy.
* :class:`RunningStatistics` accumulates mean and covariance on the host in
  float64 with Chan et al.'s pairwise update (merge of per-batch centred
  scatter matrices), which stays accurate when the mean is large compared with
  the spread, unlike a raw sum of squares.  Covariance uses ddof=1 like
  ``np.cov(rowvar=False)``.

All input errors are :class:`EvaluationInputError` (a ValueError).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dxmi_jax import parallel
from dxmi_jax.models import inception

FEATURE_EXTRACTOR = "pytorch-fid FID-InceptionV3 port (JAX), pool3 2048-d, bilinear resize to 299, inputs uint8/255"


class EvaluationInputError(ValueError):
  """Bad evaluation input: images, reference files, features."""


class NonFiniteFeaturesError(EvaluationInputError):
  """NaN or inf in features or statistics."""


def validate_images(images: Any, name: str = "images", expect_hwc: Optional[Tuple[int, int, int]] = None) -> np.ndarray:
  """Checks an image batch is uint8 NHWC with 3 channels (and a given HWC)."""
  arr = np.asarray(images)
  if arr.dtype != np.uint8:
    raise EvaluationInputError(
      f"{name}: expected uint8 images in [0, 255] (NHWC), got dtype {arr.dtype}; "
      f"convert samples with dxmi_jax.image_export.to_uint8"
    )
  if arr.ndim != 4 or arr.shape[-1] != 3:
    raise EvaluationInputError(f"{name}: expected an NHWC array with 3 channels, got shape {arr.shape}")
  if arr.shape[0] == 0:
    raise EvaluationInputError(f"{name}: contains no images")
  if expect_hwc is not None and tuple(arr.shape[1:]) != tuple(expect_hwc):
    raise EvaluationInputError(
      f"{name}: image shape {tuple(arr.shape[1:])} differs from the first images' "
      f"{tuple(expect_hwc)}; all images must have the same size"
    )
  return arr


class ShardedBatchRunner:
  """Applies ``fn(params, batch) -> pytree of (B, ...) arrays`` over a stream of batches.

  ``fn`` must be jitted (or jittable) and row-wise; ``params`` are replicated
  and every batch is sharded on its leading axis over the mesh.  The global
  batch size is rounded up to a multiple of the device count.
  """

  def __init__(self, fn: Callable, params: Any, batch_size: int, devices: Optional[Sequence[jax.Device]] = None):
    if batch_size < 1:
      raise EvaluationInputError(f"batch_size must be >= 1, got {batch_size}")
    self.mesh = parallel.make_mesh(devices)
    n_dev = self.mesh.devices.size
    self.batch_size = -(-batch_size // n_dev) * n_dev
    self._fn = fn
    self._data_sharding = NamedSharding(self.mesh, P("data"))
    self._params = jax.device_put(params, NamedSharding(self.mesh, P()))

  @property
  def num_devices(self) -> int:
    return int(self.mesh.devices.size)

  def _put(self, batch: np.ndarray):
    n = batch.shape[0]
    if n < self.batch_size:
      pad = np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad], axis=0)
    return jax.device_put(batch, self._data_sharding), n

  def run(self, chunks: Iterable[np.ndarray]) -> Iterator[Any]:
    """Yields numpy outputs per chunk; chunks may have any length <= batch_size.

    One batch is kept in flight, so the host prepares (and transfers) the next
    batch while the devices compute.
    """
    pending = None
    for chunk in chunks:
      if chunk.shape[0] > self.batch_size:
        raise ValueError(f"chunk of {chunk.shape[0]} rows exceeds batch_size {self.batch_size}")
      if chunk.shape[0] == 0:
        continue
      x, n = self._put(chunk)
      out = self._fn(self._params, x)  # async dispatch
      if pending is not None:
        yield _fetch(*pending)
      pending = (out, n)
    if pending is not None:
      yield _fetch(*pending)


def _fetch(out, n):
  return jax.tree.map(lambda a: np.asarray(a)[:n], out)


def rechunk(batches: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
  """Regroups a stream of arrays into chunks of exactly ``size`` rows (last may be short)."""
  buf, have = [], 0
  for b in batches:
    b = np.asarray(b)
    while b.shape[0]:
      take = min(size - have, b.shape[0])
      buf.append(b[:take])
      have += take
      b = b[take:]
      if have == size:
        yield np.concatenate(buf, axis=0) if len(buf) > 1 else buf[0]
        buf, have = [], 0
  if have:
    yield np.concatenate(buf, axis=0)


@functools.partial(jax.jit, static_argnames=("precision",))
def _inception_apply(variables, images_uint8, precision: str = "highest"):
  """uint8 NHWC -> (pool3, logits_unbiased), both float32."""
  with jax.default_matmul_precision(precision):
    x = images_uint8.astype(jnp.float32) / 255.0
    out = inception.InceptionV3().apply(variables, x)
  return out["pool3"], out["logits_unbiased"]


class InceptionFeatureExtractor:
  """FID-Inception pool3 features and IS logits of uint8 NHWC images, on all devices.

  Args:
    variables: Flax variables from :func:`dxmi_jax.models.inception.load_variables`.
    batch_size: global batch (rounded up to a multiple of the device count).
    precision: matmul/conv precision; "highest" (default) keeps float32
      accuracy on GPUs/TPUs, "default" allows TF32/bf16 passes for speed.
  """

  name = FEATURE_EXTRACTOR

  def __init__(
    self,
    variables: Dict[str, Any],
    batch_size: int = 200,
    devices: Optional[Sequence[jax.Device]] = None,
    precision: str = "highest",
  ):
    fn = functools.partial(_inception_apply, precision=precision)
    self._runner = ShardedBatchRunner(fn, variables, batch_size, devices)

  @classmethod
  def from_weights(cls, weights: Any = None, config: Any = None, **kw) -> "InceptionFeatureExtractor":
    """``weights``: path, state_dict mapping, or None (config / env var); see load_variables."""
    return cls(inception.load_variables(weights, config), **kw)

  @property
  def batch_size(self) -> int:
    return self._runner.batch_size

  @property
  def num_devices(self) -> int:
    return self._runner.num_devices

  def iter_features(
    self, batches: Iterable[np.ndarray], name: str = "images"
  ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yields (pool3, logits_unbiased) per chunk; validates shapes and finiteness."""
    state = {"hwc": None}

    def checked():
      for b in batches:
        b = validate_images(b, name, state["hwc"])
        state["hwc"] = b.shape[1:]
        yield b

    for pool3, logits in self._runner.run(rechunk(checked(), self.batch_size)):
      if not (np.all(np.isfinite(pool3)) and np.all(np.isfinite(logits))):
        raise NonFiniteFeaturesError(
          f"{name}: the Inception produced NaN/inf features; check the Inception weights "
          f"file (corrupt or not the FID weights)"
        )
      yield pool3, logits

  def features(self, images: Any, name: str = "images") -> Dict[str, np.ndarray]:
    """All features of an in-memory uint8 array (N, H, W, 3)."""
    images = validate_images(images, name)
    pools, logits = [], []
    for p, l in self.iter_features([images], name):
      pools.append(p)
      logits.append(l)
    return {"pool3": np.concatenate(pools), "logits_unbiased": np.concatenate(logits)}

  def statistics(self, images: Any, name: str = "images") -> "RunningStatistics":
    stats = RunningStatistics()
    for p, _ in self.iter_features([validate_images(images, name)], name):
      stats.update(p)
    return stats


class RunningStatistics:
  """Streaming float64 mean / covariance (ddof=1) of feature rows."""

  def __init__(self, dim: Optional[int] = None):
    self.n = 0
    self.dim = dim
    self._mean: Optional[np.ndarray] = None
    self._m2: Optional[np.ndarray] = None  # sum of centred outer products

  def update(self, features: Any) -> "RunningStatistics":
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
      raise EvaluationInputError(f"features must be (N, D), got shape {x.shape}")
    if x.shape[0] == 0:
      return self
    if self.dim is None:
      self.dim = x.shape[1]
    elif x.shape[1] != self.dim:
      raise EvaluationInputError(f"feature dimension {x.shape[1]} != {self.dim} of earlier batches")
    if not np.all(np.isfinite(x)):
      raise NonFiniteFeaturesError("features contain NaN or inf; no statistics computed")
    nb = x.shape[0]
    mb = x.mean(axis=0)
    xc = x - mb
    m2b = xc.T @ xc
    if self.n == 0:
      self._mean, self._m2 = mb, m2b
    else:
      n = self.n + nb
      delta = mb - self._mean
      self._mean = self._mean + delta * (nb / n)
      self._m2 = self._m2 + m2b + np.outer(delta, delta) * (self.n * nb / n)
    self.n += nb
    return self

  @property
  def mean(self) -> np.ndarray:
    if self.n == 0:
      raise EvaluationInputError("no features were accumulated")
    return self._mean

  @property
  def covariance(self) -> np.ndarray:
    if self.n < 2:
      raise EvaluationInputError(f"a covariance needs at least 2 feature rows, got {self.n}")
    return self._m2 / (self.n - 1)
