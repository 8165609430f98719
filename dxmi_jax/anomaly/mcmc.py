"""The baseline DxMI replaces: an EBM trained by maximum likelihood with Langevin MCMC negatives.

Same energy network (``config.energy``, e.g. ``energy_mlp``), same optimiser (Adam at
``config.optim.energy_lr``), same energy loss and clip as the EV trainer's energy step
(``dxmi.energy_step``: mean E(data) - mean E(x-) [+ gamma (...)], global-norm clip
``config.optim.energy_grad_clip``); only the negatives x- differ.  They come from
**persistent** Langevin chains (PCD, as in Du & Mordatch's IGEBM):

* a buffer of ``buffer_size`` chains, initialised from the prior N(0, I) (the same prior as the
  DxMI policy's x_0; the data are standardised);
* each iteration takes B random chains, re-initialises each from N(0, I) with probability
  ``reinit``, runs ``steps`` unadjusted Langevin steps
      x <- x - step_size * grad E(x) + sqrt(2 step_size) * noise_scale * eps,   eps ~ N(0, I)
  and writes them back; the results are the negatives.
Defaults (``default_settings``): 20 steps, step size 0.01, noise_scale 1 (proper Langevin at
temperature 1, so exp(-E) is the density being fitted), buffer 10,000, reinit 0.05.

Everything of an iteration is one pure, vmappable function of (state, batch), like
``dxmi.make_train_step``, so the benchmark trains 5 seeds in one compiled program.
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp

from dxmi_jax import dxmi
from dxmi_jax.state import TrainState


@dataclasses.dataclass(frozen=True)
class LangevinSettings:
  steps: int = 20
  step_size: float = 0.01
  noise_scale: float = 1.0
  buffer_size: int = 10000
  reinit: float = 0.05


def default_settings() -> LangevinSettings:
  return LangevinSettings()


@flax.struct.dataclass
class MCMCState:
  step: jax.Array
  rng: jax.Array
  energy: TrainState
  buffer: jax.Array


def langevin(energy_apply, params, x, key, s: LangevinSettings):
  """``s.steps`` unadjusted Langevin steps on E(params, .) from x (no parameter gradient)."""
  params = jax.lax.stop_gradient(params)
  grad_x = jax.grad(lambda xx: jnp.sum(energy_apply(params, xx, None)))

  def body(i, x):
    eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    return x - s.step_size * grad_x(x) + jnp.sqrt(2.0 * s.step_size) * s.noise_scale * eps

  return jax.lax.fori_loop(0, s.steps, body, x)


def init_state(energy_module, tx, shape, rng, s: LangevinSettings) -> MCMCState:
  """Fresh energy parameters and a buffer of N(0, I) chains; shape: one sample's, e.g. (D,)."""
  shape = tuple(shape)
  k_init, k_buf, k_run = jax.random.split(rng, 3)
  params = energy_module.init(k_init, jnp.zeros((1,) + shape), jnp.zeros((1,), jnp.int32))["params"]
  ts = TrainState.create(apply_fn=None, params=params, tx=tx)
  ts = ts.replace(step=jnp.asarray(ts.step, jnp.int32))
  return MCMCState(
    step=jnp.zeros((), jnp.int32),
    rng=k_run,
    energy=ts,
    buffer=jax.random.normal(k_buf, (s.buffer_size,) + shape, jnp.float32),
  )


def make_train_step(energy_apply, cfg: dxmi.DxMIConfig, s: LangevinSettings):
  """``train_step(state, batch) -> (state, metrics)``: PCD negatives, then one energy step."""

  def train_step(state: MCMCState, batch):
    x_data = batch["x"]
    b = x_data.shape[0]
    key = jax.random.fold_in(state.rng, state.step)
    k_idx, k_re, k_noise, k_lang = jax.random.split(key, 4)
    idx = jax.random.randint(k_idx, (b,), 0, state.buffer.shape[0])
    x0 = state.buffer[idx]
    fresh = jax.random.normal(k_noise, x0.shape, x0.dtype)
    re = jax.random.uniform(k_re, (b,) + (1,) * (x0.ndim - 1)) < s.reinit
    x0 = jnp.where(re, fresh, x0)
    x_neg = langevin(energy_apply, state.energy.params, x0, k_lang, s)
    energy, aux = dxmi.energy_step(state.energy, energy_apply, x_data, x_neg, None, cfg)
    ok = jnp.isfinite(aux["d_loss"]) & jnp.isfinite(aux["grad_norm"]) & jnp.all(jnp.isfinite(x_neg))
    new = state.replace(
      step=state.step + 1,
      energy=jax.tree.map(lambda n, o: jnp.where(ok, n, o), energy, state.energy),
      buffer=jnp.where(ok, state.buffer.at[idx].set(x_neg), state.buffer),
    )
    return new, {"d_loss": aux["d_loss"], "pos_e": aux["pos_e"], "neg_e": aux["neg_e"], "ok": ok}

  return train_step
