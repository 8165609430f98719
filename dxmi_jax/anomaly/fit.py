"""In-process training of EBM detectors on arrays, for benchmarks and tests.

``DxMIDetector(config, dim)`` builds the experiment of an anomaly config (``configs/anomaly.py``)
for D-dimensional inputs and jits ``dxmi.make_train_step`` (the step ``main.py`` trains with)
``vmap``-ped over seeds: ``fit(xs, seeds)`` trains one independent run per (array, seed), all
in lockstep in one compiled program.  Each run draws its batches from its own
``ArrayData(x, seed)`` (the CLI's batch stream) and its noise from its own key, exactly as a
separate run would.  One compiled step per (D, number of seeds) serves every dataset of that D,
which is what keeps the benchmark's hundreds of trainings inside its CPU budget.

``MCMCDetector`` does the same for the Langevin-MCMC EBM (``mcmc.py``) with the same energy
network, optimiser and energy loss.  Arrays passed in must already be standardised.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax import data as data_lib
from dxmi_jax import dxmi, experiment
from dxmi_jax.anomaly import data as anomaly_data
from dxmi_jax.anomaly import mcmc
from dxmi_jax.anomaly import score as score_lib


def _shape(shape):
  return (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)


def policy_net_overrides(config, shape):
  """The policy network's output size follows the data: D for an MLP, C for a conv map."""
  arch = config.policy.net.arch
  if arch == "mlp":
    return {"out_dim": int(np.prod(shape))}
  if arch == "conv_map":
    return {"out_channels": int(shape[-1]), "reduce": "none"}
  return {}


def build_experiment(config, shape, data=None):
  """The Experiment of ``config`` for (B, *shape) inputs (shape: D or (H, W, C))."""
  shape = _shape(shape)
  provider = None if data is None else data_lib.VectorDataProvider(config, data=data)
  return experiment.assemble(
    config, provider, (config.training.batch_size,) + shape, policy_net_overrides(config, shape)
  )


def _unstack(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


class _Detector:
  """Shared loop: host batches of every run, stacked, through the vmapped step."""

  config = None
  shape = ()

  def _loop(self, states, xs, seeds, num_iters):
    streams = [anomaly_data.ArrayData(np.asarray(x, np.float32), s) for x, s in zip(xs, seeds)]
    b = self.config.training.batch_size
    t0 = time.time()
    for i in range(num_iters):
      batch = {"x": jnp.asarray(np.stack([d.batch(i, b) for d in streams]))}
      states, _ = self._step(states, batch)
    jax.block_until_ready(states)
    self.last_fit_seconds = time.time() - t0
    return states

  def fit(self, xs: Sequence[np.ndarray], seeds: Sequence[int], num_iters=None):
    """Stacked states of len(seeds) runs, run i on xs[i] with seed seeds[i]."""
    if len(xs) != len(seeds):
      raise ValueError("one training array per seed")
    for x in xs:
      if tuple(x.shape[1:]) != self.shape:
        raise ValueError(f"training arrays must be (N, *{self.shape}), got {x.shape}")
    n = self.config.training.num_iters if num_iters is None else num_iters
    states = self._init(jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds]))
    return self._loop(states, xs, seeds, n)

  def score(self, states, i: int, x: np.ndarray) -> np.ndarray:
    """Energies of x under run i of ``states`` (higher = more anomalous)."""
    return score_lib.energies(self._energy_fn(_unstack(states, i)), np.asarray(x, np.float32))


class DxMIDetector(_Detector):
  """EBMs trained by DxMI with the config's trainer (the EV trainer of configs/anomaly.py)."""

  def __init__(self, config, shape):
    self.config, self.shape = config, _shape(shape)
    self.exp = build_experiment(config, self.shape)
    step = dxmi.make_train_step(self.exp.nets, self.exp.cfg, self.exp.data_shape)
    self._step = jax.jit(jax.vmap(step), donate_argnums=(0,))
    self._init = jax.jit(jax.vmap(self.exp.init_state))

  def _energy_fn(self, state):
    return self.exp.energy_fn(state)


class MCMCDetector(_Detector):
  """EBMs with the config's energy network trained with persistent Langevin negatives."""

  def __init__(self, config, shape, settings: mcmc.LangevinSettings = None):
    self.config, self.shape = config, _shape(shape)
    self.settings = settings or mcmc.default_settings()
    self.module = experiment.build_net(config.energy)
    self.energy_apply = dxmi.module_apply(self.module, with_time=False)
    cfg = experiment.dxmi_config(config)
    tx = experiment.energy_optimizer(config)
    step = mcmc.make_train_step(self.energy_apply, cfg, self.settings)
    self._step = jax.jit(jax.vmap(step), donate_argnums=(0,))
    self._init = jax.jit(jax.vmap(lambda k: mcmc.init_state(self.module, tx, self.shape, k, self.settings)))

  def _energy_fn(self, state):
    return lambda x, y=None: self.energy_apply(state.energy.params, x, None)
