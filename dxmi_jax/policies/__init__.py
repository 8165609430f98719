"""DxMI policies (T-step Gaussian samplers) and the ``build_policy`` factory.

Kinds (``config.policy.kind``):

* ``"var"``:      VAR ancestral sampler on a DDPM epsilon net (CIFAR-10, official).
* ``"ddim"``:     deterministic DDIM on the same T-step VAR schedule (baseline).
* ``"ddpm"``:     Ho et al. ancestral sampling over all 1000 DDPM steps (baseline).
* ``"edm"``:      EDM / Karras ancestral sampler on a raw ADM UNet (ImageNet-64, LSUN).
* ``"residual"``: x + net(x, t) + sigma z (the 2D toy policy).
* ``"ddgan"``:    DDGAN's posterior sampler around its NCSN++ generator (CIFAR-10 T=4).

``validate(config)`` checks the policy section (ValueError naming ``config.policy.<key>``);
``build_policy(config, net)`` checks it and builds the policy around a network.
"""

from __future__ import annotations

import numbers

from dxmi_jax.policies import schedules
from dxmi_jax.policies.base import GaussianPolicy, StepOut, bcast, gather_steps, sigma_from_log
from dxmi_jax.policies.ddgan import DDGANPolicy
from dxmi_jax.policies.edm import EDMPolicy
from dxmi_jax.policies.residual import ResidualPolicy
from dxmi_jax.policies.var import DDPMAncestralPolicy, VARPolicy

POLICY_KINDS = ("var", "ddim", "ddpm", "edm", "residual", "ddgan")
MANIFOLDS = ("euclidean", "sphere")

_MISSING = object()


def _section(config):
  """config.policy of a config (an ml_collections.ConfigDict or a dict)."""
  if "policy" not in config:
    raise ValueError("config.policy is missing: expected a section with at least 'kind' and 'num_steps'")
  return config["policy"]


def _require(section, key, check, expected, default=_MISSING):
  value = section.get(key, default)
  if value is _MISSING:
    raise ValueError(f"config.policy.{key} is missing; expected {expected}")
  if not check(value):
    raise ValueError(f"config.policy.{key} must be {expected}, got {value!r}")
  return value


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_pos_number(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0


def _is_trainable(v):
  return v == "fix_last" or isinstance(v, bool)


def validate(config) -> None:
  """Checks ``config.policy`` without building anything; ValueError naming ``config.policy.<key>``."""
  _parse(_section(config))


def build_policy(config, net) -> GaussianPolicy:
  """The policy of ``config.policy`` around the Flax module ``net``, on the manifold ``config.policy.manifold``
  ("euclidean", the default, or "sphere": every state projected onto the unit sphere).

  Raises ValueError naming the offending ``config.policy.<key>``.
  """
  kind, manifold, args, kwargs = _parse(_section(config))
  if kind == "ddgan" and not hasattr(net, "nz"):
    raise ValueError(
      f"config.policy.kind='ddgan' needs the DDGAN generator "
      f"(config.policy.net.arch='ddgan_ncsnpp'), got {type(net).__name__}"
    )
  cls = {
    "var": VARPolicy,
    "ddim": VARPolicy,
    "ddpm": DDPMAncestralPolicy,
    "edm": EDMPolicy,
    "residual": ResidualPolicy,
    "ddgan": DDGANPolicy,
  }[kind]
  policy = cls(net, *args, **kwargs)
  if manifold != "euclidean":
    policy.manifold = manifold
  return policy


def _parse(sec):
  """(kind, manifold, positional and keyword constructor arguments after the net) of a policy section.

  Fields of ``config.policy``:
    kind:             one of POLICY_KINDS.
    manifold:         one of MANIFOLDS (default "euclidean"; ddgan: only "euclidean").
    num_steps:        T >= 1 (``ddpm``: 1000, the default there).
    trainable_sigma:  "fix_last" (default for var/edm), True or False (ddim: False).
    pin_last_tau:     var/ddim: official last network time (default True).
    sigma_min, sigma_max, rho, stochastic_last, sigma_data: edm
                      (defaults 0.002, 80, 7, False, 0.5).
    beta_min, beta_max: ddgan's VP schedule (defaults 0.1, 20).
    init_sigma:       residual: the initial sigma of every step (<= 0, the default: the
                      quadratic VAR schedule of the official 2D test).
    drift_units:      residual: "absolute" (default) or "sigma" (the drift in units of sigma_t).
  """
  manifold = _require(sec, "manifold", lambda v: v in MANIFOLDS, f"one of {MANIFOLDS}", default="euclidean")
  kind = _require(sec, "kind", lambda v: v in POLICY_KINDS, f"one of {POLICY_KINDS}")
  if kind == "ddpm":
    num_steps = _require(
      sec, "num_steps", lambda v: v == 1000, "1000 (the DDPM sampler runs every diffusion step)", default=1000
    )
    return kind, manifold, (num_steps,), {}
  num_steps = int(_require(sec, "num_steps", lambda v: _is_int(v) and v >= 1, "an integer >= 1"))
  if kind in ("var", "ddim"):
    kwargs = _var_kwargs(sec, kind)
  elif kind == "edm":
    kwargs = _edm_kwargs(sec)
  elif kind == "ddgan":
    kwargs = _ddgan_kwargs(sec)
    if manifold != "euclidean":
      raise ValueError("config.policy.manifold: the ddgan policy supports only 'euclidean'")
  else:  # residual: the 2D toy policy with the quadratic VAR eta (official 2D trainer test)
    init_sigma = _require(
      sec, "init_sigma", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number", default=-1.0
    )
    eta = schedules.var_user_defined_eta(num_steps) if init_sigma <= 0 else [float(init_sigma) ** 2] * num_steps
    units = _require(
      sec, "drift_units", lambda v: v in ("absolute", "sigma"), "'absolute' or 'sigma'", default="absolute"
    )
    return kind, manifold, (num_steps, eta), {"drift_units": units}
  return kind, manifold, (num_steps,), kwargs


def _var_kwargs(sec, kind) -> dict:
  default_trainable = "fix_last" if kind == "var" else False
  trainable = _require(sec, "trainable_sigma", _is_trainable, "'fix_last', True or False", default=default_trainable)
  if kind == "ddim" and trainable is not False:
    raise ValueError(
      f"config.policy.trainable_sigma must be False for the deterministic ddim sampler, got {trainable!r}"
    )
  pin = _require(sec, "pin_last_tau", lambda v: isinstance(v, bool), "True or False", default=True)
  return dict(trainable_sigma=trainable, sampler="ancestral" if kind == "var" else "ddim", pin_last_tau=pin)


def _edm_kwargs(sec) -> dict:
  trainable = _require(sec, "trainable_sigma", _is_trainable, "'fix_last', True or False", default="fix_last")
  sigma_min = _require(sec, "sigma_min", _is_pos_number, "a number > 0", default=0.002)
  sigma_max = _require(
    sec,
    "sigma_max",
    lambda v: _is_pos_number(v) and v > sigma_min,
    f"a number > sigma_min ({sigma_min})",
    default=80.0,
  )
  rho = _require(sec, "rho", _is_pos_number, "a number > 0", default=7.0)
  stochastic_last = _require(sec, "stochastic_last", lambda v: isinstance(v, bool), "True or False", default=False)
  sigma_data = _require(sec, "sigma_data", _is_pos_number, "a number > 0", default=0.5)
  return dict(
    sigma_min=float(sigma_min),
    sigma_max=float(sigma_max),
    rho=float(rho),
    stochastic_last=stochastic_last,
    trainable_sigma=trainable,
    sigma_data=float(sigma_data),
  )


def _ddgan_kwargs(sec) -> dict:
  trainable = _require(sec, "trainable_sigma", _is_trainable, "'fix_last', True or False", default="fix_last")
  beta_min = _require(sec, "beta_min", _is_pos_number, "a number > 0", default=0.1)
  beta_max = _require(
    sec, "beta_max", lambda v: _is_pos_number(v) and v > beta_min, f"a number > beta_min ({beta_min})", default=20.0
  )
  return dict(trainable_sigma=trainable, beta_min=float(beta_min), beta_max=float(beta_max))


__all__ = [
  "GaussianPolicy",
  "StepOut",
  "bcast",
  "gather_steps",
  "sigma_from_log",
  "VARPolicy",
  "DDPMAncestralPolicy",
  "EDMPolicy",
  "DDGANPolicy",
  "ResidualPolicy",
  "POLICY_KINDS",
  "MANIFOLDS",
  "build_policy",
  "validate",
]
