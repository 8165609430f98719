"""Evaluation of image runs: a sample grid (TensorBoard + PNG) and, when configured, the FID proxy.

Generation is split over every device, and the grid and the FID samples share one batch
size, so the sampler is traced and compiled once per run (``generation.make_generator``
caches it), not at every evaluation.  The Inception extractor and the reference
statistics are loaded once, by the evaluator.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, Optional

import jax
import numpy as np

from dxmi_jax import generation, image_export, parallel
from dxmi_jax.errors import CheckpointError, ConfigError


def grid_image(images_uint8):
  """An 8-wide grid of the first 64 images (grey images as RGB)."""
  imgs = images_uint8[:64]
  if imgs.shape[-1] == 1:
    imgs = np.repeat(imgs, 3, axis=-1)
  return image_export.make_grid(imgs, nrow=8)


class ImageEvaluator:
  """Sample grid and, with ``config.eval.reference_stats``, ``fid_proxy_<n>``."""

  name = "images"

  @staticmethod
  def validate(config):
    """The proxy FID needs the Inception weights: fail before training, not after it."""
    if config.eval.reference_stats:
      from dxmi_jax.models import inception  # pylint: disable=import-outside-toplevel

      try:
        inception.resolve_weights_path(config.eval.inception_weights or None, config)
      except CheckpointError as e:
        raise ConfigError(f"config.eval.inception_weights: {e}") from None

  def __init__(self, exp):
    self.exp = exp
    self.mesh = parallel.make_mesh()
    ec = exp.config.eval
    self.batch_size = generation.generation_batch(exp, ec.fid_num_samples if ec.reference_stats else 64)

  @functools.cached_property
  def _fid(self):
    from dxmi_jax.metrics import features, fid  # pylint: disable=import-outside-toplevel

    ec = self.exp.config.eval
    extractor = features.InceptionFeatureExtractor.from_weights(ec.inception_weights or None, config=self.exp.config)
    return extractor, fid.load_reference(ec.reference_stats, load_images=False)

  @staticmethod
  def write_grid(imgs, step, workdir, writer):
    """The first 64 samples as a grid: TensorBoard image and <workdir>/samples_grid.png."""
    if writer is not None:
      writer.image("samples", grid_image(imgs), step)
    if workdir is not None and jax.process_index() == 0:
      image_export.save_image_grid(os.path.join(workdir, "samples_grid.png"), imgs[:64], nrow=8)

  def __call__(
    self, state, step: int, *, final: bool = False, workdir: Optional[str] = None, writer=None
  ) -> Dict[str, float]:
    del final
    exp, ec = self.exp, self.exp.config.eval
    out = {}
    imgs, _ = generation.generate_images(
      exp, state, 64, seed=exp.config.sample.seed, mesh=self.mesh, batch_size=self.batch_size
    )
    self.write_grid(imgs, step, workdir, writer)
    if ec.reference_stats:  # the Inception weights: config.eval.inception_weights or $DXMI_INCEPTION_WEIGHTS
      from dxmi_jax.metrics import fid  # pylint: disable=import-outside-toplevel

      extractor, ref = self._fid
      imgs, _ = generation.generate_images(
        exp, state, ec.fid_num_samples, seed=exp.config.sample.seed + 1, mesh=self.mesh, batch_size=self.batch_size
      )
      if imgs.shape[-1] == 1:
        imgs = np.repeat(imgs, 3, axis=-1)
      out.update(fid.fid_proxy(imgs, ref, extractor))
    return out
