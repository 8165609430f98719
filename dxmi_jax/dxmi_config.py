"""The experiment config -> ``dxmi.DxMIConfig``, the train step's plain options.

dxmi.py never reads the experiment config: ``from_config`` translates config.dxmi, T
(config.policy.num_steps), the gradient clips of config.optim and the compile switches of
config.perf into a DxMIConfig.  ``validate`` checks what it translates (config.dxmi, T and
config.perf) before anything is built; ConfigError names the option.
"""

from __future__ import annotations

import math

import jax

from dxmi_jax import compiler, dxmi
from dxmi_jax.errors import ConfigError, check_ranges
from dxmi_jax.models import conv

#: errors.check_ranges rows of config.dxmi (AVR's factor is checked on its own: < 0 turns it off)
RANGES = (
  ("dxmi.tau1", 0.0, True, None, False),
  ("dxmi.tau2", 0.0, True, None, False),
  ("dxmi.gamma", 0.0, True, None, False),
  ("dxmi.time_cost_sig", None, False, None, False),
  ("dxmi.time_cost", None, False, None, False),
)


def validate(config) -> None:
  """T, config.dxmi and config.perf; ConfigError (one line) naming the option."""
  T = config.policy.num_steps
  if not isinstance(T, int) or T < 1:
    raise ConfigError(f"config.policy.num_steps (T) must be an integer >= 1, got {T!r}")
  mb = config.dxmi.policy_minibatches
  if not 1 <= mb <= T:
    raise ConfigError(f"config.dxmi.policy_minibatches must be in [1, T={T}], got {mb}")
  if config.dxmi.avr_init not in dxmi.AVR_INITS:
    raise ConfigError(f"config.dxmi.avr_init: expected one of {dxmi.AVR_INITS}, got {config.dxmi.avr_init!r}")
  validate_perf(config)
  if not 0 <= config.dxmi.skip_sampler_tau <= T:
    raise ConfigError(f"config.dxmi.skip_sampler_tau must be in [0, T={T}], got {config.dxmi.skip_sampler_tau}")
  check_ranges(config, RANGES)
  avr = config.dxmi.adavelreg
  if not isinstance(avr, (int, float)) or not math.isfinite(avr):
    raise ConfigError(f"config.dxmi.adavelreg must be a finite number (< 0 turns AVR off), got {avr!r}")
  if avr >= 1.0:
    raise ConfigError(f"config.dxmi.adavelreg must be < 1 (an EMA factor; < 0 turns AVR off), got {avr!r}")


def validate_perf(config) -> None:
  """config.perf: how the step is compiled (unrolls, gradient chunks, convolutions, CPU dots)."""
  B = config.training.batch_size
  n_dev = jax.device_count()
  for key in ("rollout_unroll", "td_unroll"):
    if config.perf[key] < 0:
      raise ConfigError(f"config.perf.{key} must be >= 0 (0: fully unrolled), got {config.perf[key]}")
  if config.perf.conv not in conv.MODES:
    raise ConfigError(f"config.perf.conv: expected one of {conv.MODES}, got {config.perf.conv!r}")
  if config.perf.get("cpu_dots", "auto") not in compiler.CPU_DOTS:
    raise ConfigError(f"config.perf.cpu_dots: expected one of {compiler.CPU_DOTS}, got {config.perf.cpu_dots!r}")
  K = config.perf.policy_grad_chunks
  if isinstance(K, bool) or not isinstance(K, int) or K < 1 or B % (K * n_dev):
    raise ConfigError(
      f"config.perf.policy_grad_chunks must be an integer >= 1 with batch_size={B} divisible by it times "
      f"the number of devices ({n_dev}), got {K!r}"
    )
  rows = config.perf.get("policy_grad_chunk_rows", 0)
  if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
    raise ConfigError(f"config.perf.policy_grad_chunk_rows must be an integer >= 0 (0: off), got {rows!r}")
  if rows and K != 1:
    raise ConfigError(
      f"config.perf.policy_grad_chunk_rows={rows} and config.perf.policy_grad_chunks={K}: set one of them"
    )
  if rows and (B // n_dev) % rows:
    raise ConfigError(
      f"config.perf.policy_grad_chunk_rows={rows} must divide each device's share of the batch "
      f"(batch_size={B} over {n_dev} devices: {B // n_dev} rows)"
    )


def _none_if_neg(x):
  return None if x is None or x < 0 else x


def _clip(x):
  return None if x is None or x <= 0 else float(x)


def from_config(config) -> dxmi.DxMIConfig:
  d = config.dxmi
  return dxmi.DxMIConfig(
    num_steps=config.policy.num_steps,
    tau1=d.tau1,
    tau2=d.tau2,
    gamma=d.gamma,
    adavelreg=_none_if_neg(d.adavelreg),
    time_cost_sig=d.time_cost_sig,
    time_cost_center=_none_if_neg(d.time_cost_center),
    time_cost=d.time_cost,
    velocity_in_value=_none_if_neg(d.velocity_in_value),
    entropy_in_value=_none_if_neg(d.entropy_in_value),
    skip_sampler_tau=d.skip_sampler_tau,
    value_grad_clip=_clip(config.optim.value_grad_clip),
    energy_grad_clip=_clip(config.optim.energy_grad_clip),
    policy_grad_clip=_clip(config.optim.policy_grad_clip),
    policy_minibatches=d.policy_minibatches,
    value_resample=d.value_resample,
    policy_train_mode=d.policy_train_mode,
    separate_energy=d.separate_energy,
    avr_init=d.avr_init,
  )


def perf_from_config(config) -> dxmi.Perf:
  """The compilation switches of the iteration (config.perf; the result is the same)."""
  p = config.perf
  return dxmi.Perf(
    rollout_unroll=p.rollout_unroll, td_unroll=p.td_unroll, policy_grad_chunks=policy_grad_chunks(config)
  )


def policy_grad_chunks(config, n_dev=None) -> int:
  """K of ``dxmi._chunked_loss_and_grad``: perf.policy_grad_chunks, or from perf.policy_grad_chunk_rows
  (rows per chunk and device: K = batch_size / (devices x rows), so one config fits any device count)."""
  rows = config.perf.get("policy_grad_chunk_rows", 0)
  if not rows:
    return config.perf.policy_grad_chunks
  n_dev = n_dev or jax.device_count()
  return max(1, config.training.batch_size // (n_dev * rows))
