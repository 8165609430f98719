"""Config -> Experiment: validate every section, then build the data, networks, policy and the
train step's options, and assemble them (``build``).  The optimisers and the initial state come
from ``Experiment.init_state``.

Each section is checked by the module that reads it: ``projects`` (config.project, config.trainer),
``dxmi_config`` (T, config.dxmi, config.perf), ``policies`` (config.policy), ``optim``
(config.optim), ``networks`` (config.policy.net, config.value, config.energy), ``evaluators``
(config.eval.evaluators), and ``data.build`` (the data set's own options, when it builds the
provider).  ``validate`` runs those checks, and itself checks the options that only the run reads
(config.training's batch sizes and lengths, the data set's name and files, config.init's paths,
config.sample, config.pretrain, config.eval.reference_stats), all before anything is built,
compiled or written; each failure is one ConfigError line naming the option.  modes.validate_run
checks the rest of the loop's options.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from dxmi_jax import data as data_lib
from dxmi_jax import init as init_lib
from dxmi_jax import dxmi, dxmi_config, evaluators, generation, networks, optim, policies, projects
from dxmi_jax.data import toy2d
from dxmi_jax.errors import ConfigError, check_ranges
from dxmi_jax.state import DxMIState, TrainState, create_state


# ------------------------------------------------------------------ validation
def validate(config, mode: str = "train"):
  """Checks user input before anything is built; raises ConfigError (one line each)."""
  projects.load(config)  # its networks, data sets and evaluators register themselves
  projects.validate_trainer(config)
  _check_training(config)
  dxmi_config.validate(config)
  try:
    policies.validate(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  optim.validate(config)
  _check_data(config, mode)
  _check_run_inputs(config, mode)
  networks.validate(config)
  evaluators.validate(config)  # the data's own options are checked where they are read (data.build)


def _check_training(config):
  """Batch sizes (divisible by the number of devices; the training batch also by the number of
  processes) and the run's length.  The one check of the batch sizes' divisibility."""
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
  if B % jax.process_count():  # each process feeds B / processes rows
    raise ConfigError(
      f"config.training.batch_size={B} is not divisible by the number of processes ({jax.process_count()})"
    )
  if config.training.num_iters < 0:
    raise ConfigError(f"config.training.num_iters must be >= 0, got {config.training.num_iters}")
  if config.training.checkpoint_every < 1:
    raise ConfigError(f"config.training.checkpoint_every must be >= 1, got {config.training.checkpoint_every}")


def _check_data(config, mode):
  """The data set's name, and its files before data.build reads them."""
  name = config.data.name
  known = toy2d.NAMES + data_lib.registered() + data_lib.IMAGE_DATASETS
  if name not in known:
    raise ConfigError(f"config.data.name: unknown dataset {name!r}; expected one of {known}")
  if name == "npy":
    try:
      toy2d.load_npy(config.data.path)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  data_lib.validate_registered(config, mode)


#: errors.check_ranges rows of the options only the run reads
_RUN_RANGES = (
  ("pretrain.lr", 0.0, True, None, False),
  ("pretrain.ema", 0.0, True, 1.0, False),
  ("sample.guidance_scale", None, False, None, False),
)


def _check_run_inputs(config, mode):
  """Pretraining and sampling numbers, and the files config.init and config.eval name."""
  check_ranges(config, _RUN_RANGES)
  if config.sample.guidance_sign not in generation.GUIDANCE_SIGNS:
    raise ConfigError(
      f"config.sample.guidance_sign: expected one of {sorted(generation.GUIDANCE_SIGNS)}, "
      f"got {config.sample.guidance_sign!r}"
    )
  for key in ("policy_checkpoint", "value_checkpoint"):
    path = config.init[key]
    if path and not os.path.exists(path):
      raise ConfigError(f"config.init.{key}: {path} does not exist")
  if config.eval.reference_stats and not os.path.isfile(config.eval.reference_stats):
    raise ConfigError(
      f"config.eval.reference_stats: {config.eval.reference_stats} does not exist (write one "
      f"with `python -m dxmi_jax.metrics stats ... --out=FILE`, or use OpenAI's VIRTUAL_*.npz)"
    )
  if mode == "sample" and config.sample.num < 1:
    raise ConfigError(f"config.sample.num must be >= 1, got {config.sample.num}")


# ------------------------------------------------------------------ experiment
@dataclasses.dataclass
class Experiment:
  """Everything built from a config (``config``, the experiment config; ``dxmi``, the train step's
  options translated from it).  ``data.local_batch(step)`` -> {"x", optional "y"} numpy."""

  config: Any
  data: Any
  data_shape: tuple  # global batch shape (B, ...)
  policy: Any
  value_module: Any
  energy_module: Optional[Any]
  nets: dxmi.Networks
  dxmi: dxmi.DxMIConfig  # the train step's options (dxmi_config.from_config); config.dxmi is one of its sources
  class_cond: bool
  num_classes: int
  perf: dxmi.Perf = dxmi.Perf()  # config.perf: how the iteration is compiled

  @property
  def is_vector(self) -> bool:
    return data_lib.kind(self.config) == "vector"

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
      energy_state = TrainState.create(apply_fn=None, params=e_params, tx=optim.energy_optimizer(self.config))
    return create_state(
      k_run,
      TrainState.create(apply_fn=None, params=pol_params, tx=optim.policy_optimizer(self.config)),
      TrainState.create(apply_fn=None, params=val_params, tx=optim.value_optimizer(self.config)),
      dxmi.initial_velocity_scale(self.policy, self.dxmi),
      energy_state,
    )

  def abstract_state(self):
    return jax.eval_shape(self.init_state, jax.random.PRNGKey(0))

  def energy_fn(self, state) -> Callable:
    """x (B, ...) -> E(x) (B,) with the current parameters (for evaluation)."""
    if self.energy_module is not None:
      return lambda x, y=None: self.nets.energy_apply(state.energy.params, x, y)
    T = self.dxmi.num_steps
    return lambda x, y=None: self.nets.value_apply(state.value.params, x, jnp.full((x.shape[0],), T, jnp.int32), y)


def _init_key(raw_key):
  return jax.random.wrap_key_data(jax.random.bits(raw_key, (4,), jnp.uint32), impl="rbg")


def build(config, mode: str = "train") -> Experiment:
  """Validates ``config`` for ``mode`` (ConfigError naming the option), then builds everything."""
  init_lib.adopt_policy_architecture(config)  # a diffusers policy_checkpoint sets config.policy.net
  validate(config, mode)
  data = data_lib.build(config)
  net_over = {"out_dim": data.shape[1]} if data_lib.kind(config) == "vector" and config.policy.net.arch == "mlp" else {}
  return assemble(config, data, data.shape, net_over, class_cond=data.class_cond, num_classes=data.num_classes)


def assemble(config, data, data_shape, policy_net_overrides=None, class_cond=False, num_classes=0):
  """The networks and policy of a config around already-built data."""
  try:
    net = networks.build_net(config.policy.net, config.perf.conv, **(policy_net_overrides or {}))
    policy = policies.build_policy(config, net)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  value_module = networks.build_value(config)
  energy_module = networks.build_net(config.energy, config.perf.conv) if config.dxmi.separate_energy else None
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
    dxmi=dxmi_config.from_config(config),
    class_cond=class_cond,
    num_classes=num_classes,
    perf=dxmi_config.perf_from_config(config),
  )
