"""The optimisers of ``config.optim``: the table of names, its checks, and one builder per network."""

from __future__ import annotations

import jax
import optax

from dxmi_jax.errors import ConfigError, check_ranges

#: config.optim.{policy,value,energy} -> (learning rate, config.optim) -> optax transform
OPTIMIZERS = {
  # eps_root = 0 reproduces torch.optim.Adam (reference §8 item 23)
  "adam": lambda lr, c: optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps, eps_root=0.0),
  "radam": lambda lr, c: optax.radam(lr, b1=c.b1, b2=c.b2, eps=c.eps, eps_root=0.0, threshold=5.0),
  "sgd": lambda lr, c: optax.sgd(lr),
}

#: errors.check_ranges rows of config.optim; the clips use "<= 0" for "off" (dxmi_config reads them)
RANGES = (
  ("optim.policy_lr", 0.0, True, None, False),
  ("optim.policy_sigma_lr", 0.0, True, None, False),
  ("optim.value_lr", 0.0, True, None, False),
  ("optim.energy_lr", 0.0, True, None, False),
  ("optim.b1", 0.0, True, 1.0, False),
  ("optim.b2", 0.0, True, 1.0, False),
  ("optim.eps", 0.0, False, None, False),
  ("optim.policy_grad_clip", None, False, None, False),
  ("optim.value_grad_clip", None, False, None, False),
  ("optim.energy_grad_clip", None, False, None, False),
)


def validate(config) -> None:
  """config.optim: finite numbers in range and known optimiser names; ConfigError naming the option."""
  check_ranges(config, RANGES)
  for key in ("optim.policy", "optim.value", "optim.energy"):
    opt = config.optim[key.split(".")[1]]
    if opt not in OPTIMIZERS:
      raise ConfigError(f"config.{key}: expected one of {sorted(OPTIMIZERS)}, got {opt!r}")


def policy_optimizer(config) -> optax.GradientTransformation:
  """Two parameter groups: network weights at policy_lr, log-sigmas at policy_sigma_lr."""
  o = config.optim
  return optax.multi_transform(
    {"net": OPTIMIZERS[o.policy](o.policy_lr, o), "log_sigma": OPTIMIZERS[o.policy](o.policy_sigma_lr, o)},
    lambda params: {"net": jax.tree.map(lambda _: "net", params["net"]), "log_sigma": "log_sigma"},
  )


def value_optimizer(config):
  return OPTIMIZERS[config.optim.value](config.optim.value_lr, config.optim)


def energy_optimizer(config):
  return OPTIMIZERS[config.optim.energy](config.optim.energy_lr, config.optim)
