"""In-process training of EBM detectors on arrays, for benchmarks and tests.

``Detector(config, dim)`` builds the experiment of an anomaly config (``configs/anomaly.py``
and its variants) for D-dimensional inputs and trains it exactly as the train command does,
``vmap``-ped over seeds: ``fit(xs, seeds)`` trains one independent run per (array, seed), all
in lockstep in one compiled program, with the config's train step (``config.trainer``:
DxMI's EV trainer, or the Langevin EBM of mcmc.py), after the same stages (the autoencoder's
reconstruction pretraining, then the starting point relative to the data's scale).  Each run
draws its batches and chain starts from its own ``AnomalyData`` provider (the CLI's stream)
and its noise from its own key, exactly as a separate run would.  One compiled step per
(D, number of seeds) serves every dataset of that D (the Langevin step also depends on the
data's scale), which keeps the benchmark's hundreds of trainings inside its CPU budget.
Arrays passed in must already be transformed (z-scored or on the sphere).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax import experiment, projects
from dxmi_jax.proj.anomaly import pretrain_ae
from dxmi_jax.proj.anomaly import score as score_lib
from dxmi_jax.proj.anomaly.provider import AnomalyData, with_relative_scales


def _unstack(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


class Detector:
  """Runs of one config on arrays of one dimension D, seeds vmapped (module docstring)."""

  def __init__(self, config, dim: int):
    self.config, self.dim = config, int(dim)
    self.exp = experiment.assemble(config, None, (config.training.batch_size, self.dim), {"out_dim": self.dim})
    self._init = jax.jit(jax.vmap(self.exp.init_state))
    self._steps = {}
    self.pretrain_seconds = 0.0
    self.pretrain_losses = None

  def _step(self, provider):
    """The vmapped train step, compiled once per (trainer, data scale if the step uses it)."""
    key = round(provider.scale, 12) if self.config.get("trainer", "dxmi") == "mcmc" else None
    if key not in self._steps:
      exp = dataclasses.replace(self.exp, data=provider)
      self._steps[key] = jax.jit(jax.vmap(projects.make_train_step(exp)), donate_argnums=(0,))
    return self._steps[key]

  def fit(self, xs: Sequence[np.ndarray], seeds: Sequence[int], num_iters=None):
    """Stacked states of len(seeds) runs, run i on xs[i] with seed seeds[i]."""
    if len(xs) != len(seeds):
      raise ValueError("one training array per seed")
    for x in xs:
      if x.ndim != 2 or x.shape[1] != self.dim:
        raise ValueError(f"training arrays must be (N, {self.dim}), got {x.shape}")
    n = self.config.training.num_iters if num_iters is None else num_iters
    providers = [AnomalyData.from_array(self.config, np.asarray(x, np.float32), s) for x, s in zip(xs, seeds)]
    states = self._init(jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds]))
    states = self._pretrain(states, providers)
    states = _stack([with_relative_scales(self.exp, _unstack(states, i), p) for i, p in enumerate(providers)])
    step = self._step(providers[0])
    t0 = time.time()
    for i in range(n):
      batches = [p.local_batch(i) for p in providers]
      states, _ = step(states, {k: jnp.asarray(np.stack([b[k] for b in batches])) for k in batches[0]})
    jax.block_until_ready(states)
    self.last_fit_seconds = time.time() - t0
    return states

  def _pretrain(self, states, providers):
    """The autoencoder's reconstruction pretraining (pretrain_ae.py), every run at once."""
    c = self.config
    if c.energy.arch != "ae_energy" or not c.init.get("pretrain_energy", False):
      return states
    pc = c.pretrain_energy
    t0 = time.time()
    params, self.pretrain_losses = pretrain_ae.pretrain_params(
      self.exp.energy_module,
      states.energy.params,
      lambda i: np.stack([p.data.batch(i, pc.batch_size) for p in providers]),
      pc.num_iters,
      pc.lr,
      vmapped=True,
    )
    self.pretrain_seconds = time.time() - t0
    return states.replace(energy=states.energy.replace(params=params))

  def energy_fn(self, states, i: int):
    return self.exp.energy_fn(_unstack(states, i))

  def score(self, states, i: int, x: np.ndarray) -> np.ndarray:
    """Energies of the (transformed) rows x under run i of ``states`` (higher = more anomalous)."""
    return score_lib.energies(self.energy_fn(states, i), np.asarray(x, np.float32))
