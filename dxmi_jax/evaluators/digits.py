"""Evaluation of digits runs: the sample grid plus the digits metric against a held-out split.

The metric is ``dxmi_jax.metrics.digits_classifier`` (Fréchet distance, precision, recall and
class coverage in a small CNN's features).  Its reference is ``config.eval.digits_reference``:
"val" for model selection during training (``configs/digits.py`` trains on "fit", so neither
training nor selection sees "test"); the benchmark reports "test" afterwards.  Samples:
``config.eval.fid_num_samples`` at the fixed seed ``config.sample.seed + 1``, so the
evaluations of one run differ only by the weights.  The classifier and the reference
features are built once per run.
"""

from __future__ import annotations

import functools
from typing import Dict, Optional

from dxmi_jax import generation
from dxmi_jax.data import digits as digits_data
from dxmi_jax.errors import ConfigError
from dxmi_jax.evaluators.images import ImageEvaluator


class DigitsEvaluator(ImageEvaluator):
  """``digits_fd``, ``digits_precision``, ``digits_recall``, ``digits_class_tv`` (and the grid)."""

  name = "digits"

  @staticmethod
  def validate(config):
    ImageEvaluator.validate(config)
    if config.data.name != "digits":
      raise ConfigError(f"config.eval.evaluators: 'digits' needs config.data.name=digits, not {config.data.name!r}")
    ref = config.eval.digits_reference
    if ref not in digits_data.SPLITS:
      raise ConfigError(f"config.eval.digits_reference: expected one of {digits_data.SPLITS}, got {ref!r}")
    if config.eval.fid_num_samples < 2:
      raise ConfigError(
        f"config.eval.fid_num_samples must be >= 2 for the digits metric, got {config.eval.fid_num_samples}"
      )

  def __init__(self, exp):
    super().__init__(exp)
    self.batch_size = generation.generation_batch(exp, exp.config.eval.fid_num_samples)

  @functools.cached_property
  def _classifier(self):
    from dxmi_jax.metrics import digits_classifier  # pylint: disable=import-outside-toplevel

    clf = digits_classifier.default_classifier()
    clf.reference(self.exp.config.eval.digits_reference)  # reference features, once
    return clf

  def __call__(
    self, state, step: int, *, final: bool = False, workdir: Optional[str] = None, writer=None
  ) -> Dict[str, float]:
    del final
    exp, ec = self.exp, self.exp.config.eval
    imgs, _ = generation.generate_images(
      exp, state, ec.fid_num_samples, seed=exp.config.sample.seed + 1, mesh=self.mesh, batch_size=self.batch_size
    )
    self.write_grid(imgs, step, workdir, writer)  # the grid is the first 64 of the scored samples
    m = self._classifier.evaluate(imgs, ec.digits_reference)
    return {f"digits_{k}": float(m[k]) for k in ("fd", "precision", "recall", "class_tv")}
