"""Projects on top of the core: ``load(config)`` imports ``dxmi_jax.proj.<config.project>``.

Importing a project registers what it adds (networks, data providers, run modes, evaluators and
the training stages below); the core never imports a project by name.  A *stage* runs in
``--mode=train`` before a fresh run starts (no checkpoint yet), after the config's pretrained
weights are loaded: ``stage(exp, workdir, pretrained) -> pretrained``, where ``pretrained`` is
None or an abstract state whose loaded leaves are arrays (``train.load_pretrained``).  A stage
may train something into the workdir first (reusing it when it is there) and place its
weights into that state.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Callable, Dict, List

from dxmi_jax.errors import ConfigError

_STAGES: Dict[str, List[Callable]] = {}


def available() -> list:
  """The project packages under dxmi_jax/proj/ (found on disk: nothing is imported)."""
  return sorted(m.name for m in pkgutil.iter_modules([os.path.join(os.path.dirname(__file__), "proj")]) if m.ispkg)


def load(config):
  """Imports the project ``config.project`` names ("" or missing: none); returns its module."""
  name = config.get("project", "") if hasattr(config, "get") else ""
  if not name:
    return None
  if name not in available():
    raise ConfigError(f"config.project: unknown project {name!r}; expected one of {available()} (dxmi_jax/proj/)")
  return importlib.import_module(f"dxmi_jax.proj.{name}")


def register_stage(project: str, stage: Callable) -> None:
  """A training stage of ``project`` (see the module docstring), run in registration order."""
  stages = _STAGES.setdefault(project, [])
  if stage not in stages:
    stages.append(stage)


def run_stages(exp, workdir: str, pretrained):
  """The stages of the experiment's project, in order, threading ``pretrained`` through."""
  for stage in _STAGES.get(exp.config.get("project", ""), []):
    pretrained = stage(exp, workdir, pretrained)
  return pretrained


# --------------------------------------------------------------------- trainers
_TRAINERS: Dict[str, Callable] = {}


def register_trainer(name: str, make_train_step: Callable) -> None:
  """``make_train_step(exp, rules) -> train_step(state, batch)``, selected by ``config.trainer``
  (a DxMIState in and out, like ``dxmi.make_train_step``'s; ``rules``: a
  ``parallel.ShardingRules`` or None)."""
  _TRAINERS[name] = make_train_step


def validate_trainer(config) -> None:
  name = config.get("trainer", "dxmi")
  if name != "dxmi" and name not in _TRAINERS:
    raise ConfigError(f"config.trainer: unknown trainer {name!r}; expected 'dxmi' or one of {sorted(_TRAINERS)}")


def make_train_step(exp, rules=None):
  """The train step of ``config.trainer``: "dxmi" (the default) or one a project registered.
  ``rules``: where its arrays live (``parallel.ShardingRules``; None: one device)."""
  name = exp.config.get("trainer", "dxmi")
  if name == "dxmi":
    from dxmi_jax import dxmi  # pylint: disable=import-outside-toplevel

    return dxmi.make_train_step(exp.nets, exp.dxmi, exp.data_shape, perf=exp.perf, rules=rules)
  validate_trainer(exp.config)
  return _TRAINERS[name](exp, rules)
