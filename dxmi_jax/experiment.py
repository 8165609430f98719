"""Config -> objects: data, networks, policy, optimisers and the initial state.

This is the one module that reads the experiment config; everything after it
(the train step, the loop, metrics) receives plain objects.  ``validate`` runs
every check that can fail on user input *before* anything is compiled or
written, and raises ``ConfigError`` with one line naming the option.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from dxmi_jax import data as data_lib
from dxmi_jax import compiler, dxmi, evaluators, projects, sampling
from dxmi_jax.data import toy2d
from dxmi_jax.models import attention, conv, registry
from dxmi_jax.models.layers import REMAT_POLICIES
from dxmi_jax.models.mlp import TimeMLP
from dxmi_jax.state import DxMIState, TrainState, create_state


from dxmi_jax.errors import ConfigError  # noqa: E402  (re-exported: experiment.ConfigError)


def _mlp_default_config():
  c = ml_collections.ConfigDict()
  c.out_dim = 2
  c.hidden = (128, 128, 128)
  c.time_scale = 1.0
  c.time_embed_dim = 0
  c.zero_out = False
  c.dtype = "float32"
  return c


registry.register("mlp", TimeMLP, _mlp_default_config)


def is_vector_data(config) -> bool:
  return data_lib.kind(config) == "vector"


# ------------------------------------------------------------------ validation
def validate(config, mode: str = "train"):
  """Checks user input before compilation; raises ConfigError (one line each)."""
  projects.load(config)  # its networks, data sets and evaluators register themselves
  projects.validate_trainer(config)
  T = config.policy.num_steps
  if not isinstance(T, int) or T < 1:
    raise ConfigError(f"config.policy.num_steps (T) must be an integer >= 1, got {T!r}")
  name = config.data.name
  known = toy2d.NAMES + data_lib.registered() + data_lib.IMAGE_DATASETS
  if name not in known:
    raise ConfigError(f"config.data.name: unknown dataset {name!r}; expected one of {known}")
  B = config.training.batch_size
  if B < 1:
    raise ConfigError(f"config.training.batch_size must be >= 1, got {B}")
  n_dev = jax.device_count()
  for key, b in (
    ("config.training.batch_size", B),
    ("config.pretrain.batch_size", config.pretrain.batch_size),
    ("config.sample.batch_size", config.sample.batch_size),
  ):
    if b % n_dev:
      raise ConfigError(f"{key}={b} is not divisible by the number of devices ({n_dev})")
  if config.training.num_iters < 0:
    raise ConfigError(f"config.training.num_iters must be >= 0, got {config.training.num_iters}")
  if config.training.checkpoint_every < 1:
    raise ConfigError(f"config.training.checkpoint_every must be >= 1, got {config.training.checkpoint_every}")
  from dxmi_jax.policies import POLICY_KINDS  # pylint: disable=import-outside-toplevel

  if config.policy.kind not in POLICY_KINDS:
    raise ConfigError(f"config.policy.kind: expected one of {POLICY_KINDS}, got {config.policy.kind!r}")
  mb = config.dxmi.policy_minibatches
  if not 1 <= mb <= T:
    raise ConfigError(f"config.dxmi.policy_minibatches must be in [1, T={T}], got {mb}")
  if config.dxmi.avr_init not in dxmi.AVR_INITS:
    raise ConfigError(f"config.dxmi.avr_init: expected one of {dxmi.AVR_INITS}, got {config.dxmi.avr_init!r}")
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
  if not 0 <= config.dxmi.skip_sampler_tau <= T:
    raise ConfigError(f"config.dxmi.skip_sampler_tau must be in [0, T={T}], got {config.dxmi.skip_sampler_tau}")
  validate_numbers(config)
  for key in ("optim.policy", "optim.value", "optim.energy"):
    opt = config.optim[key.split(".")[1]]
    if opt not in _OPTIMIZERS:
      raise ConfigError(f"config.{key}: expected one of {sorted(_OPTIMIZERS)}, got {opt!r}")
  if name == "npy":
    try:
      toy2d.load_npy(config.data.path)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  data_lib.validate_registered(config, mode)
  for key in ("policy_checkpoint", "value_checkpoint"):
    path = config.init[key]
    if path and not os.path.exists(path):
      raise ConfigError(f"config.init.{key}: {path} does not exist")
  if config.eval.reference_stats and not os.path.isfile(config.eval.reference_stats):
    raise ConfigError(
      f"config.eval.reference_stats: {config.eval.reference_stats} does not exist (write one "
      f"with `python -m dxmi_jax.evaluate stats ... --out=FILE`, or use OpenAI's VIRTUAL_*.npz)"
    )
  if mode == "sample" and config.sample.num < 1:
    raise ConfigError(f"config.sample.num must be >= 1, got {config.sample.num}")
  for key in ("policy.net", "value"):
    sub = config.policy.net if key == "policy.net" else config.value
    if sub.arch not in registry.archs():
      raise ConfigError(f"config.{key}.arch: unknown network {sub.arch!r}; expected one of {registry.archs()}")
  for key, sub in (("policy.net", config.policy.net), ("value", config.value), ("energy", config.energy)):
    if sub.get("remat", "none") not in REMAT_POLICIES:
      raise ConfigError(f"config.{key}.remat: expected one of {sorted(REMAT_POLICIES)}, got {sub.remat!r}")
    if "attention_chunk" in sub:
      for tokens in attended_tokens(sub):
        try:
          attention.check_chunk(sub.attention_chunk, tokens, where=f"config.{key}.attention_chunk")
        except ValueError as e:
          raise ConfigError(str(e)) from None
  evaluators.validate(config)  # the data's own options are checked where they are read (data.build)


def attended_tokens(net) -> list:
  """H*W of every attention layer of a UNet config (ADM: attention_resolutions plus the middle
  block; DDPM: attn_resolutions plus the middle block)."""
  if net.arch == "adm_unet":
    size, levels, res = (
      net.get("image_size", 64),
      len(net.get("channel_mult", (1,))),
      net.get("attention_resolutions", ()),
    )
  elif net.arch == "ddpm_unet":
    levels = len(net.get("level_channels", ()) or net.get("ch_mult", (1,)))
    size, res = net.get("resolution", 32), net.get("attn_resolutions", ())
  else:
    return []
  if isinstance(res, str):  # the official "32,16,8" spelling
    res = [r for r in res.split(",") if r]
  return sorted({int(r) ** 2 for r in res} | {(size // 2 ** (levels - 1)) ** 2})


#: (section.key, lower bound, lower bound included, upper bound or None, upper included) of the
#: numeric options; each must also be finite.  Clips and AVR use "<= 0" / "< 0" for "off",
#: so their off values stay accepted.
_NUMERIC_RANGES = (
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
  ("dxmi.tau1", 0.0, True, None, False),
  ("dxmi.tau2", 0.0, True, None, False),
  ("dxmi.gamma", 0.0, True, None, False),
  ("dxmi.time_cost_sig", None, False, None, False),
  ("dxmi.time_cost", None, False, None, False),
  ("pretrain.lr", 0.0, True, None, False),
  ("pretrain.ema", 0.0, True, 1.0, False),
  ("sample.guidance_scale", None, False, None, False),
)


def validate_numbers(config):
  """Every numeric option is finite and in range; the AVR factor is off (< 0) or in [0, 1)."""

  def check(key, value, lo, lo_incl, hi, hi_incl, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise ConfigError(f"config.{key} must be a finite number, got {value!r}")
    if lo is not None and (value < lo or (value == lo and not lo_incl)):
      raise ConfigError(f"config.{key} must be {what}, got {value!r}")
    if hi is not None and (value > hi or (value == hi and not hi_incl)):
      raise ConfigError(f"config.{key} must be {what}, got {value!r}")

  for key, lo, lo_incl, hi, hi_incl in _NUMERIC_RANGES:
    section, name = key.split(".")
    if section not in config or name not in config[section]:
      continue
    lo_s = "" if lo is None else f"{'>=' if lo_incl else '>'} {lo:g}"
    hi_s = "" if hi is None else f"{'<=' if hi_incl else '<'} {hi:g}"
    check(key, config[section][name], lo, lo_incl, hi, hi_incl, " and ".join(filter(None, (lo_s, hi_s))))
  if config.sample.guidance_sign not in sampling.GUIDANCE_SIGNS:
    raise ConfigError(
      f"config.sample.guidance_sign: expected one of {sorted(sampling.GUIDANCE_SIGNS)}, "
      f"got {config.sample.guidance_sign!r}"
    )
  avr = config.dxmi.adavelreg
  if not isinstance(avr, (int, float)) or not math.isfinite(avr):
    raise ConfigError(f"config.dxmi.adavelreg must be a finite number (< 0 turns AVR off), got {avr!r}")
  if avr >= 1.0:
    raise ConfigError(f"config.dxmi.adavelreg must be < 1 (an EMA factor; < 0 turns AVR off), got {avr!r}")


# ---------------------------------------------------------------- optimisers
_OPTIMIZERS = {
  # eps_root = 0 reproduces torch.optim.Adam (reference §8 item 23)
  "adam": lambda lr, c: optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps, eps_root=0.0),
  "radam": lambda lr, c: optax.radam(lr, b1=c.b1, b2=c.b2, eps=c.eps, eps_root=0.0, threshold=5.0),
  "sgd": lambda lr, c: optax.sgd(lr),
}


def policy_optimizer(config) -> optax.GradientTransformation:
  """Two parameter groups: network weights at policy_lr, log-sigmas at policy_sigma_lr."""
  o = config.optim
  return optax.multi_transform(
    {"net": _OPTIMIZERS[o.policy](o.policy_lr, o), "log_sigma": _OPTIMIZERS[o.policy](o.policy_sigma_lr, o)},
    lambda params: {"net": jax.tree.map(lambda _: "net", params["net"]), "log_sigma": "log_sigma"},
  )


def value_optimizer(config):
  return _OPTIMIZERS[config.optim.value](config.optim.value_lr, config.optim)


def energy_optimizer(config):
  return _OPTIMIZERS[config.optim.energy](config.optim.energy_lr, config.optim)


def _none_if_neg(x):
  return None if x is None or x < 0 else x


def _clip(x):
  return None if x is None or x <= 0 else float(x)


def dxmi_config(config) -> dxmi.DxMIConfig:
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


def perf_config(config) -> dxmi.Perf:
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


# ---------------------------------------------------------------- networks
def net_config(sub) -> tuple:
  """(arch, constructor fields) of a network config section."""
  fields = {k: v for k, v in sub.items() if k != "arch"}
  return sub.arch, fields


def build_net(sub, conv_mode=None, **overrides):
  """``conv_mode``: config.perf.conv (models/conv.py), carried by the network's convolutions."""
  arch, fields = net_config(sub)
  fields.update(overrides)
  return registry.build(arch, fields, conv_mode=conv_mode)


def build_policy(config, net=None):
  from dxmi_jax.policies import build_policy as _build  # pylint: disable=import-outside-toplevel

  return _build(config, net if net is not None else build_net(config.policy.net, config.perf.conv))


def build_value(config):
  overrides = {}
  if config.value.arch == "mlp" and config.value.time_scale < 0:
    overrides["time_scale"] = 1.0 / config.policy.num_steps  # V(x, t) sees t / T
  return build_net(config.value, config.perf.conv, **overrides)


# ---------------------------------------------------------------- experiment
@dataclasses.dataclass
class Experiment:
  """Everything built from a config.  ``data.local_batch(step)`` -> {"x", optional "y"} numpy."""

  config: Any
  data: Any
  data_shape: tuple  # global batch shape (B, ...)
  policy: Any
  value_module: Any
  energy_module: Optional[Any]
  nets: dxmi.Networks
  cfg: dxmi.DxMIConfig
  class_cond: bool
  num_classes: int
  perf: dxmi.Perf = dxmi.Perf()  # config.perf: how the iteration is compiled

  @property
  def is_vector(self) -> bool:
    return is_vector_data(self.config)

  # ------------------------------------------------------------- init
  def init_state(self, rng) -> DxMIState:
    k_pol, k_val, k_en, k_run = jax.random.split(rng, 4)
    # Parameter initialisation draws from "rbg" keys: XLA compiles their random bits in
    # half the time of threefry's, which dominates the compile of big UNets on CPU.  The
    # values are replicated and deterministic; the training noise stays threefry.
    k_pol, k_val, k_en = (_init_key(k) for k in (k_pol, k_val, k_en))
    x = jnp.zeros((1,) + tuple(self.data_shape[1:]), jnp.float32)
    y = jnp.zeros((1,), jnp.int32) if self.class_cond else None
    pol_params = self.policy.init_params(k_pol, x, y)
    val_params = self.value_module.init(k_val, x, jnp.zeros((1,), jnp.int32), y=y)["params"]
    energy_state = None
    if self.energy_module is not None:
      e_params = self.energy_module.init(k_en, x, jnp.zeros((1,), jnp.int32), y=y)["params"]
      energy_state = TrainState.create(apply_fn=None, params=e_params, tx=energy_optimizer(self.config))
    return create_state(
      k_run,
      TrainState.create(apply_fn=None, params=pol_params, tx=policy_optimizer(self.config)),
      TrainState.create(apply_fn=None, params=val_params, tx=value_optimizer(self.config)),
      dxmi.initial_velocity_scale(self.policy, self.cfg),
      energy_state,
    )

  def abstract_state(self):
    return jax.eval_shape(self.init_state, jax.random.PRNGKey(0))

  def energy_fn(self, state) -> Callable:
    """x (B, ...) -> E(x) (B,) with the current parameters (for evaluation)."""
    if self.energy_module is not None:
      return lambda x, y=None: self.nets.energy_apply(state.energy.params, x, y)
    T = self.cfg.num_steps
    return lambda x, y=None: self.nets.value_apply(state.value.params, x, jnp.full((x.shape[0],), T, jnp.int32), y)


def _init_key(raw_key):
  return jax.random.wrap_key_data(jax.random.bits(raw_key, (4,), jnp.uint32), impl="rbg")


def build(config, mode: str = "train") -> Experiment:
  """Validates ``config`` for ``mode`` (ConfigError naming the option), then builds everything."""
  from dxmi_jax import init as init_lib  # pylint: disable=import-outside-toplevel

  init_lib.adopt_policy_architecture(config)  # a diffusers policy_checkpoint sets config.policy.net
  validate(config, mode)
  data = data_lib.build(config)
  net_over = {"out_dim": data.shape[1]} if data_lib.kind(config) == "vector" and config.policy.net.arch == "mlp" else {}
  return assemble(config, data, data.shape, net_over, class_cond=data.class_cond, num_classes=data.num_classes)


def assemble(config, data, data_shape, policy_net_overrides=None, class_cond=False, num_classes=0):
  """The networks and policy of a config around already-built data."""
  try:
    policy = build_policy(config, build_net(config.policy.net, config.perf.conv, **(policy_net_overrides or {})))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  value_module = build_value(config)
  energy_module = build_net(config.energy, config.perf.conv) if config.dxmi.separate_energy else None
  nets = dxmi.Networks(
    policy=policy,
    value_apply=dxmi.module_apply(value_module),
    energy_apply=None if energy_module is None else dxmi.module_apply(energy_module, with_time=False),
  )
  return Experiment(
    config=config,
    data=data,
    data_shape=tuple(data_shape),
    policy=policy,
    value_module=value_module,
    energy_module=energy_module,
    nets=nets,
    cfg=dxmi_config(config),
    class_cond=class_cond,
    num_classes=num_classes,
    perf=perf_config(config),
  )
