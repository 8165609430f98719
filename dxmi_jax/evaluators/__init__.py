"""Evaluators, chosen by config: small objects built once per run, each with its own cache.

``build(exp)`` returns the evaluators of ``config.eval.evaluators`` (comma-separated
names; "" picks by the data: ``vector`` for vector data, ``images`` for images).
Each is called as ``evaluator(state, step, final=..., workdir=..., writer=...)`` and
returns a flat {metric: float} dict; the loop merges them into one evaluation record.

  vector   SW (mean ± std over data draws) with its floor, energy AUC with the ideal, figure
  images   a sample grid (TensorBoard + PNG) and, when configured, the FID proxy
  digits   the grid plus the digits metric against config.eval.digits_reference (model selection)
"""

from __future__ import annotations

from typing import Callable, Dict, List

from dxmi_jax import data as data_lib
from dxmi_jax.errors import ConfigError

_REGISTRY: Dict[str, Callable] = {}


def register(name: str, factory: Callable) -> None:
  """``factory(exp) -> evaluator``; later registrations replace earlier ones."""
  _REGISTRY[name] = factory


def _defaults():
  # imported here: each evaluator module pulls in its own metrics
  from dxmi_jax.evaluators import digits, images, vector  # pylint: disable=import-outside-toplevel

  for name, cls in (
    ("vector", vector.VectorEvaluator),
    ("images", images.ImageEvaluator),
    ("digits", digits.DigitsEvaluator),
  ):
    _REGISTRY.setdefault(name, cls)


def names(config) -> List[str]:
  spec = config.eval.evaluators
  if spec:
    return [s.strip() for s in spec.split(",") if s.strip()]
  return [data_lib.kind(config)]


def validate(config) -> None:
  _defaults()
  unknown = [n for n in names(config) if n not in _REGISTRY]
  if unknown:
    raise ConfigError(f"config.eval.evaluators: unknown {unknown}; expected names from {sorted(_REGISTRY)}")
  for n in names(config):  # an evaluator's own options (e.g. the FID's weights), before anything runs
    check = getattr(_REGISTRY[n], "validate", None)
    if check is not None:
      check(config)


def build(exp) -> list:
  validate(exp.config)
  return [_REGISTRY[n](exp) for n in names(exp.config)]
