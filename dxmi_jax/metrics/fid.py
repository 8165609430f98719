"""Fréchet distance, reference statistics files, and the training-time FID proxy.

Fréchet distance between N(mu1, S1) and N(mu2, S2)::

    |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2)

with the fallbacks of pytorch-fid and OpenAI's evaluator (reference §7.1): if
``scipy.linalg.sqrtm(S1 S2)`` is not finite, retry with 1e-6 * I added to both
covariances; a complex result is accepted (real part kept) only when the
imaginary part of its diagonal is within 1e-3, otherwise it is an error.

Reference files (npz) come in two kinds, both read by :func:`load_reference`:

* OpenAI's ``VIRTUAL_*.npz``: ``mu``, ``sigma`` (from the TF Inception graph),
  ``arr_0`` reference images (uint8 NHWC) for precision/recall, optionally
  ``mu_s``/``sigma_s`` (sFID, unused here);
* our cached statistics (``python -m dxmi_jax.metrics stats``): ``mu``,
  ``sigma``, ``n``, ``features`` (pool3 features of up to 10k images, for
  precision/recall) and metadata strings ``protocol``, ``feature_extractor``,
  ``source``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
from scipy import linalg

from dxmi_jax.io import atomic_savez
from dxmi_jax.metrics import features as features_lib

OPENAI_TF_EXTRACTOR = (
  "OpenAI evaluator TF graph classify_image_graph_def.pb (assumed: npz without feature_extractor metadata)"
)
FULL_EVAL_SAMPLES = 50_000


class FrechetDistanceError(features_lib.EvaluationInputError):
  """Statistics that do not fit together or give a meaningless distance."""


class ReferenceFileError(features_lib.EvaluationInputError):
  """A reference npz without usable statistics or images."""


def _sqrtm(a: np.ndarray) -> np.ndarray:
  # Covariances of fewer samples than dimensions are singular by construction;
  # scipy's LinAlgWarning about it is noise here (non-finite results are handled).
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    return linalg.sqrtm(a)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6, imag_atol: float = 1e-3) -> float:
  """Fréchet distance between two Gaussians, in float64."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or mu1.ndim != 1:
    raise FrechetDistanceError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
  d = mu1.shape[0]
  if s1.shape != (d, d) or s2.shape != (d, d):
    raise FrechetDistanceError(f"covariances must be ({d}, {d}) to match the means, got {s1.shape} and {s2.shape}")
  for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
    if not np.all(np.isfinite(a)):
      raise features_lib.NonFiniteFeaturesError(f"{name} contains NaN or inf")
  diff = mu1 - mu2
  covmean = _sqrtm(s1 @ s2)
  if not np.all(np.isfinite(covmean)):
    logging.warning(
      "FID: sqrtm(sigma1 sigma2) is not finite (near-singular product); retrying with %g * I added to both covariances",
      eps,
    )
    offset = np.eye(d) * eps
    covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if not np.all(np.isfinite(covmean)):
      raise FrechetDistanceError(
        f"sqrtm of the covariance product is not finite even with {eps} * I added; the statistics are degenerate"
      )
  if np.iscomplexobj(covmean):
    max_diag_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
    if max_diag_imag > imag_atol:
      raise FrechetDistanceError(
        f"sqrtm of the covariance product has an imaginary diagonal component of "
        f"{max_diag_imag:.3g} (> {imag_atol}); the covariances are not valid (PSD) statistics"
      )
    covmean = covmean.real
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


# --------------------------------------------------------------------------------------
# Reference statistics files.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReferenceStatistics:
  """Everything a reference file can provide.  Either (mu, sigma) or images/features."""

  mu: Optional[np.ndarray] = None
  sigma: Optional[np.ndarray] = None
  n: Optional[int] = None
  features: Optional[np.ndarray] = None  # pool3 rows for precision/recall
  images: Optional[np.ndarray] = None  # uint8 NHWC (OpenAI's arr_0)
  feature_extractor: str = features_lib.FEATURE_EXTRACTOR
  protocol: str = ""
  source: str = ""

  @property
  def has_statistics(self) -> bool:
    return self.mu is not None and self.sigma is not None


def _str(z, key, default=""):
  if key not in z.files:
    return default
  return str(z[key][()]) if z[key].shape == () else str(z[key])


def load_reference(path: Union[str, os.PathLike], load_images: bool = True) -> ReferenceStatistics:
  """Reads an OpenAI ``VIRTUAL_*.npz`` or one of our cached statistics files."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ReferenceFileError(f"reference file not found: {path}")
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ReferenceFileError(f"reference {path} is not a readable .npz: {e}") from e
  with z:
    keys = set(z.files)
    if ("mu" in keys) != ("sigma" in keys):
      raise ReferenceFileError(f"reference {path} has only one of 'mu'/'sigma'; both are needed")
    if not keys & {"mu", "arr_0"}:
      raise ReferenceFileError(
        f"reference {path} has neither statistics ('mu' and 'sigma') nor images ('arr_0'); found keys {sorted(keys)}"
      )
    ref = ReferenceStatistics(source=_str(z, "source", path))
    if "mu" in keys:
      ref.mu = np.asarray(z["mu"], np.float64)
      ref.sigma = np.asarray(z["sigma"], np.float64)
      d = ref.mu.shape[0] if ref.mu.ndim == 1 else -1
      if ref.mu.ndim != 1 or ref.sigma.shape != (d, d):
        raise ReferenceFileError(
          f"reference {path}: mu {ref.mu.shape} and sigma {ref.sigma.shape} must be (D,) and (D, D)"
        )
      if not (np.all(np.isfinite(ref.mu)) and np.all(np.isfinite(ref.sigma))):
        raise features_lib.NonFiniteFeaturesError(f"reference {path}: mu/sigma contain NaN or inf")
    if "n" in keys:
      ref.n = int(z["n"])
    if "features" in keys:
      ref.features = np.asarray(z["features"], np.float32)
      if ref.features.ndim != 2:
        raise ReferenceFileError(f"reference {path}: 'features' must be (N, D), got {ref.features.shape}")
    if "arr_0" in keys and load_images:
      ref.images = features_lib.validate_images(z["arr_0"], f"{path}:arr_0")
    if "feature_extractor" in keys:
      ref.feature_extractor = _str(z, "feature_extractor")
      ref.protocol = _str(z, "protocol")
    elif ref.has_statistics:
      ref.feature_extractor = OPENAI_TF_EXTRACTOR
      ref.protocol = "OpenAI reference batch (mu/sigma precomputed with the TF graph)"
    if ref.has_statistics and ref.mu.shape[0] != 2048:
      raise ReferenceFileError(
        f"reference {path}: statistics have dimension {ref.mu.shape[0]}, expected 2048 (Inception pool3)"
      )
    if ref.features is not None and ref.features.shape[1] != 2048:
      raise ReferenceFileError(
        f"reference {path}: features have dimension {ref.features.shape[1]}, expected 2048 (Inception pool3)"
      )
  return ref


def save_reference(path: Union[str, os.PathLike], ref: ReferenceStatistics) -> None:
  """Writes our cached statistics format atomically."""
  if not ref.has_statistics:
    raise ReferenceFileError("refusing to write reference statistics without mu/sigma")
  arrays: Dict[str, Any] = dict(
    mu=np.asarray(ref.mu, np.float64),
    sigma=np.asarray(ref.sigma, np.float64),
    n=np.int64(ref.n if ref.n is not None else -1),
    protocol=np.array(ref.protocol),
    feature_extractor=np.array(ref.feature_extractor),
    source=np.array(ref.source),
  )
  if ref.features is not None:
    arrays["features"] = np.asarray(ref.features, np.float32)
  atomic_savez(path, **arrays)


def fid_proxy(
  images_uint8: Any,
  ref_stats: Union[ReferenceStatistics, Tuple[Any, Any]],
  extractor: "features_lib.InceptionFeatureExtractor",
) -> Dict[str, float]:
  """Training-time FID against cached statistics: ``{"fid_proxy_<n>": value}``.

  Used for model selection during training (reference §2h: CIFAR 10k samples,
  ImageNet 5k).  It is named ``fid_proxy_<n>`` because it is computed on fewer
  samples than the 50k protocol and with the pytorch-fid Inception port, so it
  is not comparable with the paper's FID.

  Args:
    images_uint8: (n, H, W, 3) uint8 samples.
    ref_stats: a :class:`ReferenceStatistics` with mu/sigma, or a (mu, sigma) pair.
    extractor: an :class:`~dxmi_jax.metrics.features.InceptionFeatureExtractor`.
  """
  if isinstance(ref_stats, ReferenceStatistics):
    if not ref_stats.has_statistics:
      raise ReferenceFileError("fid_proxy needs reference statistics (mu, sigma)")
    mu2, sigma2 = ref_stats.mu, ref_stats.sigma
  else:
    mu2, sigma2 = ref_stats
  stats = extractor.statistics(images_uint8, name="fid_proxy samples")
  value = frechet_distance(stats.mean, stats.covariance, mu2, sigma2)
  return {f"fid_proxy_{stats.n}": value}
