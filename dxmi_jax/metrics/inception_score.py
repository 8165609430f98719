"""Inception score: exp(E_x KL(p(y|x) || p(y))), averaged over splits.

``p(y|x)`` is the softmax of the 1008 Inception logits.  Following improved-GAN
and OpenAI's evaluator, the logits are ``pool3 @ W`` **without** the fc bias
(``logits_unbiased`` of :mod:`dxmi_jax.models.inception`).  The samples are
cut into ``num_splits`` consecutive parts with boundaries ``i * N // splits``
(improved-GAN); OpenAI's evaluator uses parts of 5,000 samples, which is the
same thing for its 50,000 samples and 10 splits.  Computed in float64 with a
log-softmax, so no ``0 * log 0`` NaNs.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
from scipy import special

from dxmi_jax.metrics import features as features_lib


def inception_score(logits: Any, num_splits: int = 10) -> Tuple[float, float]:
  """Returns (mean, std) of the per-split scores (std with ddof=0, as improved-GAN)."""
  x = np.asarray(logits, np.float64)
  if x.ndim != 2 or x.shape[1] < 2:
    raise features_lib.EvaluationInputError(f"logits must be (N, classes), got {x.shape}")
  n = x.shape[0]
  if num_splits < 1 or n < num_splits:
    raise features_lib.EvaluationInputError(
      f"Inception score with {num_splits} splits needs at least {num_splits} samples "
      f"(got {n}); lower the number of splits"
    )
  if not np.all(np.isfinite(x)):
    raise features_lib.NonFiniteFeaturesError("logits contain NaN or inf")
  logp = special.log_softmax(x, axis=1)
  scores = []
  for i in range(num_splits):
    part = logp[i * n // num_splits : (i + 1) * n // num_splits]
    log_marginal = special.logsumexp(part, axis=0) - np.log(part.shape[0])
    kl = np.sum(np.exp(part) * (part - log_marginal[None, :]), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
