"""Anomaly detection and localisation on frozen-backbone feature maps (the paper's MVTec protocol).

The inputs are (H, W, C) feature maps (UniAD style: EfficientNet-b4 features of 224x224
images, 272 channels at 14x14), standardised per channel with the training maps' statistics.
The policy, value and energy are fully convolutional (``conv_map``, networks.py) and DxMI
trains them with the EV trainer exactly as for vectors (the train step is shape-generic).

Scores, from the energy's per-location map e(x)[h, w] (``ConvMap.energy_map``):
* **image score = max over locations of e(x)**.  The training energy is the *mean* of the map
  (a sum over locations would scale with H*W), but a small defect raises a few locations
  only and the mean dilutes it by the map's area; the max is the usual choice of feature-map
  detectors (UniAD, PatchCore) for that reason;
* **pixel score map** = e(x) bilinearly upsampled (``jax.image.resize``) to the mask size, for
  the pixel-level (localisation) AUROC over every pixel of every test image.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax.anomaly import data as anomaly_data
from dxmi_jax.anomaly import fit, metrics
from dxmi_jax.anomaly.networks import ConvMap


def channel_standardizer(features: np.ndarray) -> anomaly_data.Standardizer:
  """Per-channel mean/std over (N, H, W) of the training maps (broadcasts over the last axis)."""
  return anomaly_data.Standardizer.fit(features.reshape(-1, features.shape[-1]))


class FeatureMapDetector:
  """DxMI (EV trainer) on (H, W, C) maps: fit on normal maps, then image scores and pixel maps."""

  def __init__(self, config, shape):
    self.config = config
    self.detector = fit.DxMIDetector(config, tuple(shape))
    module = self.detector.exp.energy_module
    self._map = jax.jit(lambda p, x: module.apply({"params": p}, x, method=ConvMap.energy_map))

  def fit(self, train_maps: np.ndarray, seed: int = 0, num_iters: Optional[int] = None):
    self.transform = channel_standardizer(train_maps)
    self.states = self.detector.fit([self.transform(train_maps)], [seed], num_iters)
    return self

  def energy_maps(self, maps: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, H, W) per-location energies."""
    params = jax.tree.map(lambda a: a[0], self.states.energy.params)
    x = self.transform(maps)
    return np.concatenate(
      [np.asarray(self._map(params, jnp.asarray(x[i : i + batch]))) for i in range(0, len(x), batch)]
    )

  def score(self, maps: np.ndarray, mask_size=None):
    """(image scores (N,), pixel score maps (N, h, w) or None): max of the map; upsampled map."""
    e = self.energy_maps(maps)
    image = e.reshape(len(e), -1).max(1)
    pixel = None
    if mask_size is not None:
      h, w = (mask_size, mask_size) if np.isscalar(mask_size) else mask_size
      pixel = np.asarray(jax.image.resize(jnp.asarray(e), (len(e), h, w), "bilinear"))
    return image, pixel


def evaluate(label, image_scores, mask=None, pixel_maps=None):
  """Detection AUROC/AUPRC over images and, with masks, localisation AUROC over all pixels."""
  out = {"image_auroc": metrics.auroc(label, image_scores), "image_auprc": metrics.auprc(label, image_scores)}
  if mask is not None and pixel_maps is not None:
    out["pixel_auroc"] = metrics.auroc(np.asarray(mask).reshape(-1) > 0, np.asarray(pixel_maps).reshape(-1))
  return out
