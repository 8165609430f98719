"""Image experiments: data sources, networks and policy from the config; FID proxy; sample export.

``config.data.name`` selects the data (reference §5, data row):
  cifar10            tfds "cifar10" train split (50,000 images, 32x32), random flip
  imagenet64         tfds "imagenet_resized/64x64" train split (box-resized, labels in sorted-synset order)
  imagenet64_folder  an ILSVRC train folder at config.data.path with ADM center-crop preprocessing,
                     labels from the sorted synset prefixes (what the official code and the EDM
                     checkpoint use; see dxmi_jax.data.images)
  lsun               an image folder at config.data.path (256x256, unconditional)
  folder             any image folder (config.data.image_size, config.data.preprocessing)
  digits             scikit-learn's handwritten digits (train split; config.data.image_size 8 or 16)
  synthetic          random images (smoke tests and benchmarks: no data needed)
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np
from absl import logging

from dxmi_jax import sampling
from dxmi_jax.experiment import ConfigError, assemble

_SIZES = {"cifar10": 32, "imagenet64": 64, "imagenet64_folder": 64, "lsun": 256}


def _expected_size(config) -> int:
  return _SIZES.get(config.data.name, config.data.image_size)


def validate(config, mode: str = "train"):
  """Image-specific checks (the generic ones are in experiment.validate)."""
  d = config.data
  size = _expected_size(config)
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
      raise ConfigError(f"config.policy.net.num_classes={n_cls} does not match config.data.num_classes="
                        f"{d.num_classes} (class-conditional data)")
  if config.sample.labels:
    try:
      labels = [int(v) for v in config.sample.labels.split(",")]
    except ValueError:
      raise ConfigError(f"config.sample.labels: expected comma-separated class indices, got "
                        f"{config.sample.labels!r}") from None
    if not d.class_cond:
      raise ConfigError("config.sample.labels: the model is unconditional (config.data.class_cond=False)")
    bad = [v for v in labels if not 0 <= v < d.num_classes]
    if bad:
      raise ConfigError(f"config.sample.labels: {bad} outside [0, {d.num_classes})")
  if config.eval.reference_stats:  # the proxy FID needs the Inception weights: fail now, not after training
    from dxmi_jax import convert  # pylint: disable=import-outside-toplevel
    from dxmi_jax.models import inception  # pylint: disable=import-outside-toplevel
    try:
      inception.resolve_weights_path(config.eval.inception_weights or None, config)
    except convert.CheckpointError as e:
      raise ConfigError(f"config.eval.inception_weights: {e}") from None
  if config.sample.rounding not in ("round", "truncate"):
    raise ConfigError(f"config.sample.rounding: expected round or truncate, got {config.sample.rounding!r}")


def build_source(config):
  from dxmi_jax.data import images  # pylint: disable=import-outside-toplevel
  d = config.data
  size = _expected_size(config)
  try:
    if d.name == "cifar10":
      return images.tfds_source("cifar10", "train", d.tfds_data_dir or None)
    if d.name == "imagenet64":
      return images.tfds_source("imagenet_resized/64x64", "train", d.tfds_data_dir or None)
    if d.name == "imagenet64_folder":
      return images.folder_source(d.path, 64, "adm_center_crop", class_cond=True)
    if d.name in ("lsun", "folder"):
      return images.folder_source(d.path, size, d.preprocessing, class_cond=d.class_cond)
    if d.name == "digits":
      from dxmi_jax.data.digits import digits_source  # pylint: disable=import-outside-toplevel
      return digits_source("train", size)
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
  """Per-process slices of deterministic global batches: {"x": [-1,1] NHWC, "y": labels}."""

  def __init__(self, config, source):
    self.config, self.source = config, source
    self.class_cond = config.data.class_cond
    self._loaders = {}

  def _loader(self, size):
    if size not in self._loaders:
      from dxmi_jax.data.loader import ImageLoader  # pylint: disable=import-outside-toplevel
      try:
        self._loaders[size] = ImageLoader(
            self.source, size, self.config.training.seed, random_flip=self.config.data.random_flip,
            process_index=jax.process_index(), process_count=jax.process_count(),
            num_workers=self.config.data.num_workers)
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


def build(config) -> Experiment:
  validate(config)
  source = build_source(config)
  size = _expected_size(config)
  if len(source) < config.training.batch_size:
    raise ConfigError(f"config.training.batch_size={config.training.batch_size} exceeds the dataset size "
                      f"({len(source)} images)")
  channels = np.asarray(source[0]["image"]).shape[-1]
  if config.data.channels and config.data.channels != channels:
    raise ConfigError(f"config.data.channels={config.data.channels} but the images have {channels}")
  data = ImageDataProvider(config, source)
  return assemble(config, data, (config.training.batch_size, size, size, channels),
                  class_cond=config.data.class_cond, num_classes=config.data.num_classes)


# ----------------------------------------------------------------- generation
def sample_labels(exp, num: int, seed: int):
  """config.sample.labels cycled, or uniform random labels (reference §2h), or None."""
  if not exp.class_cond:
    return None
  spec = exp.config.sample.labels
  if spec:
    fixed = np.array([int(v) for v in spec.split(",")], np.int32)
    return np.resize(fixed, num)
  return np.random.default_rng(seed).integers(0, exp.num_classes, size=num).astype(np.int32)


def generate_images(exp, state, num: int, seed: int, mesh=None, labels=None):
  """(uint8 NHWC samples, labels or None) from the current policy."""
  from dxmi_jax import samples as samples_lib  # pylint: disable=import-outside-toplevel
  sc = exp.config.sample
  bs = min(sc.batch_size, max(num, jax.device_count()))
  bs -= bs % jax.device_count()
  labels = sample_labels(exp, num, seed) if labels is None else labels
  gen = sampling.make_generator(exp.policy, exp.data_shape[1:], bs, mesh,
                                value_apply=exp.nets.value_apply, guidance_scale=sc.guidance_scale)
  x = sampling.sample_many(gen, state.policy.params, seed, num, bs, labels=labels,
                           value_params=state.value.params)
  return samples_lib.to_uint8(x, sc.rounding), labels


def _grid(images_uint8):
  from dxmi_jax import samples as samples_lib  # pylint: disable=import-outside-toplevel
  imgs = images_uint8[:64]
  if imgs.shape[-1] == 1:
    imgs = np.repeat(imgs, 3, axis=-1)
  return samples_lib.make_grid(imgs, nrow=8)


_FID_CACHE = {}


def evaluate(exp, state, workdir, step, writer, final: bool):
  """A sample grid (TensorBoard + PNG) and, when configured, the proxy FID."""
  ec = exp.config.eval
  out = {}
  imgs, _ = generate_images(exp, state, 64, seed=exp.config.sample.seed)
  grid = _grid(imgs)
  writer.image("samples", grid, step)
  if jax.process_index() == 0:
    from dxmi_jax import samples as samples_lib  # pylint: disable=import-outside-toplevel
    samples_lib.save_image_grid(os.path.join(workdir, "samples_grid.png"), imgs, nrow=8)
  if ec.reference_stats:  # the Inception weights: config.eval.inception_weights or $DXMI_INCEPTION_WEIGHTS
    from dxmi_jax.metrics import features, fid  # pylint: disable=import-outside-toplevel
    key = (ec.inception_weights, ec.reference_stats)
    if key not in _FID_CACHE:
      _FID_CACHE[key] = (
          features.InceptionFeatureExtractor.from_weights(ec.inception_weights or None, config=exp.config),
          fid.load_reference(ec.reference_stats, load_images=False))
    extractor, ref = _FID_CACHE[key]
    imgs, _ = generate_images(exp, state, ec.fid_num_samples, seed=exp.config.sample.seed + 1)
    if imgs.shape[-1] == 1:
      imgs = np.repeat(imgs, 3, axis=-1)
    out.update(fid.fid_proxy(imgs, ref, extractor))
  return out


def sample(exp, state, workdir, mesh):
  """--mode=sample: <workdir>/samples.npz (uint8 arr_0, arr_1 labels) and samples_grid.png."""
  from dxmi_jax import samples as samples_lib  # pylint: disable=import-outside-toplevel
  sc = exp.config.sample
  imgs, labels = generate_images(exp, state, sc.num, sc.seed, mesh)
  path = os.path.join(workdir, "samples.npz")
  if jax.process_index() == 0:
    samples_lib.save_samples_npz(path, imgs, labels)
    samples_lib.save_image_grid(os.path.join(workdir, "samples_grid.png"),
                                np.repeat(imgs[:64], 3, -1) if imgs.shape[-1] == 1 else imgs[:64], nrow=8)
    print(f"wrote {imgs.shape[0]} samples {imgs.shape[1:]} to {path} (and samples_grid.png)", flush=True)
  logging.info("sampled %d images", imgs.shape[0])
  return path
