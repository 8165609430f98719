"""Data, the one place where vector and image data differ: ``build(config)`` -> a provider.

Every provider has ``shape`` (the global batch shape), ``class_cond`` / ``num_classes``,
``local_batch(step[, size])`` (this process's slice of global batch ``step``, numpy),
``iterate(start, num)`` and ``checkpoint_meta()`` (what a checkpoint must carry about the
data, e.g. a fitted standardisation).  Batches are a pure function of (seed, step).

  vector   toy densities and (N, D) files (``toy2d``)
  images   tfds, image folders, scikit-learn digits, synthetic (``images``, ``loader``, ``digits``)

Projects add data sets by name with ``register(name, factory, validate)`` (e.g. the anomaly
project's ``npz`` vector files): ``factory(config)`` returns a provider.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import jax
import numpy as np

from dxmi_jax import parallel
from dxmi_jax.data import images, toy2d
from dxmi_jax.data.digits import digits_source
from dxmi_jax.data.loader import ImageLoader
from dxmi_jax.errors import ConfigError

SPLIT_DATASETS = ("cifar10", "imagenet64", "digits")  # the data sets with splits other than "train"
IMAGE_DATASETS = ("cifar10", "imagenet64", "imagenet64_folder", "lsun", "digits", "folder", "synthetic")
_SIZES = {"cifar10": 32, "imagenet64": 64, "imagenet64_folder": 64, "lsun": 256}


class Registered(NamedTuple):
  kind: str  # "vector" or "images"
  factory: Callable  # config -> provider
  validate: Optional[Callable]  # (config, mode) -> None, raising ConfigError


_REGISTRY: Dict[str, Registered] = {}


def register(name: str, factory: Callable, validate: Optional[Callable] = None, kind: str = "vector") -> None:
  """A data set of a project: ``factory(config)`` -> provider; ``validate(config, mode)`` checks
  its options and files before anything is compiled or written."""
  _REGISTRY[name] = Registered(kind, factory, validate)


def registered() -> tuple:
  return tuple(_REGISTRY)


def validate_registered(config, mode: str) -> None:
  entry = _REGISTRY.get(config.data.name)
  if entry is not None and entry.validate is not None:
    entry.validate(config, mode)


def kind(config) -> str:
  """ "vector" for (N, D) data, "images" for image datasets."""
  entry = _REGISTRY.get(config.data.name)
  if entry is not None:
    return entry.kind
  return "vector" if config.data.name in toy2d.NAMES else "images"


def image_size(config) -> int:
  return _SIZES.get(config.data.name, config.data.image_size)


def build(config):
  """The data provider of ``config.data`` (validated first; ConfigError names the option)."""
  d = config.data
  if d.split != "train" and d.name not in SPLIT_DATASETS:
    raise ConfigError(
      f"config.data.split={d.split!r}: only {SPLIT_DATASETS} have other splits; {d.name!r} trains on 'train'"
    )
  if d.name in _REGISTRY:
    return _REGISTRY[d.name].factory(config)
  if kind(config) == "vector":
    return VectorDataProvider(config)
  validate_images(config)
  source = image_source(config)
  if len(source) < config.training.batch_size:
    raise ConfigError(
      f"config.training.batch_size={config.training.batch_size} exceeds the dataset size ({len(source)} images)"
    )
  channels = np.asarray(source[0]["image"]).shape[-1]
  if config.data.channels and config.data.channels != channels:
    raise ConfigError(f"config.data.channels={config.data.channels} but the images have {channels}")
  return ImageDataProvider(config, source, channels)


# ------------------------------------------------------------------------ vector
class VectorDataProvider:
  """Per-process slices of deterministic global batches of vector data; ``shape`` (B, D)."""

  def __init__(self, config, data=None, transform=None):
    """``data``: a ready toy2d.VectorData (default: from the config), e.g. a transformed
    training array; ``transform``: the input transform fitted on it (an object with
    ``to_json()``), which ``checkpoint_meta`` hands to every checkpoint."""
    self.data = data if data is not None else toy2d.VectorData(config.data.name, config.training.seed, config.data.path)
    self.transform = transform
    self.global_batch = config.training.batch_size
    self.shape = (self.global_batch, int(self.data.dim))
    self.class_cond, self.num_classes = False, 0

  def checkpoint_meta(self):
    return (
      {} if self.transform is None else {"data_transform": self.transform.to_json(), "data_dim": int(self.data.dim)}
    )

  def local_batch(self, step: int, size: Optional[int] = None):
    size = size or self.global_batch
    start, stop = parallel.process_slice(size)
    return {"x": self.data.batch(step, size)[start:stop]}

  def iterate(self, start: int, num: int):
    """local_batch(start), local_batch(start + 1), ... (num of them)."""
    return (self.local_batch(i) for i in range(start, start + num))


# ------------------------------------------------------------------------ images
def validate_images(config):
  """The image data options, and the network and sampling options that must agree with them."""
  d = config.data
  size = image_size(config)
  if d.image_size and d.image_size != size:
    raise ConfigError(f"config.data.image_size={d.image_size} does not match dataset {d.name!r} ({size})")
  if size <= 0:
    raise ConfigError(f"config.data.image_size must be > 0 for dataset {d.name!r}")
  net = config.policy.net
  net_size = net.get("resolution", net.get("image_size", size))
  if net_size != size:
    key = "resolution" if "resolution" in net else "image_size"
    raise ConfigError(f"config.policy.net.{key}={net_size} does not match the data's image size {size}")
  if d.name in ("imagenet64_folder", "lsun", "folder") and not d.path:
    raise ConfigError(f"config.data.path: required for dataset {d.name!r} (an image folder)")
  if d.class_cond:
    n_cls = net.get("num_classes", None)
    if n_cls is None or n_cls != d.num_classes:
      raise ConfigError(
        f"config.policy.net.num_classes={n_cls} does not match config.data.num_classes="
        f"{d.num_classes} (class-conditional data)"
      )
  if config.sample.labels:
    try:
      labels = [int(v) for v in config.sample.labels.split(",")]
    except ValueError:
      raise ConfigError(
        f"config.sample.labels: expected comma-separated class indices, got {config.sample.labels!r}"
      ) from None
    if not d.class_cond:
      raise ConfigError("config.sample.labels: the model is unconditional (config.data.class_cond=False)")
    bad = [v for v in labels if not 0 <= v < d.num_classes]
    if bad:
      raise ConfigError(f"config.sample.labels: {bad} outside [0, {d.num_classes})")
  if config.sample.rounding not in ("round", "truncate"):
    raise ConfigError(f"config.sample.rounding: expected round or truncate, got {config.sample.rounding!r}")


def image_source(config):
  """The image source of ``config.data`` (tfds, a folder, digits or synthetic)."""
  d = config.data
  size = image_size(config)
  try:
    if d.name == "cifar10":
      return images.tfds_source("cifar10", d.split, d.tfds_data_dir or None)
    if d.name == "imagenet64":
      return images.tfds_source("imagenet_resized/64x64", d.split, d.tfds_data_dir or None)
    if d.name == "imagenet64_folder":
      return images.folder_source(d.path, 64, "adm_center_crop", class_cond=True)
    if d.name in ("lsun", "folder"):
      return images.folder_source(d.path, size, d.preprocessing, class_cond=d.class_cond)
    if d.name == "digits":
      return digits_source(d.split, size)
    if d.name == "synthetic":
      rng = np.random.default_rng(config.training.seed)
      n = max(256, 2 * config.training.batch_size)
      imgs = rng.integers(0, 256, size=(n, size, size, d.channels or 3), dtype=np.uint8)
      labels = rng.integers(0, max(d.num_classes, 1), size=(n,)) if d.class_cond else None
      return images.ArraySource(imgs, labels)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"config.data ({d.name}): {e}") from None
  raise ConfigError(f"config.data.name: unknown image dataset {d.name!r}")


class ImageDataProvider:
  """Per-process slices of deterministic global batches: {"x": [-1,1] NHWC, "y": labels}; ``shape`` NHWC."""

  def __init__(self, config, source, channels: int):
    self.config, self.source = config, source
    self.class_cond, self.num_classes = config.data.class_cond, config.data.num_classes
    size = image_size(config)
    self.shape = (config.training.batch_size, size, size, channels)
    self._loaders = {}

  def checkpoint_meta(self):
    return {}

  def _loader(self, size):
    if size not in self._loaders:
      try:
        self._loaders[size] = ImageLoader(
          self.source,
          size,
          self.config.training.seed,
          random_flip=self.config.data.random_flip,
          process_index=jax.process_index(),
          process_count=jax.process_count(),
          num_workers=self.config.data.num_workers,
        )
      except ValueError as e:
        raise ConfigError(str(e)) from None
    return self._loaders[size]

  def _as_batch(self, b):
    out = {"x": b["image"]}
    if self.class_cond:
      out["y"] = b["label"].astype(np.int32)
    return out

  def local_batch(self, step: int, size: Optional[int] = None):
    return self._as_batch(self._loader(size or self.config.training.batch_size).get_batch(step))

  def iterate(self, start: int, num: int):
    """Batches start .. start+num-1, decoded by background threads ahead of the loop."""
    return map(self._as_batch, self._loader(self.config.training.batch_size).iterate(start, num))
