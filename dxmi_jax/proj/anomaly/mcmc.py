"""The baseline DxMI replaces: an EBM trained by maximum likelihood with Langevin MCMC negatives.

The trainer ``mcmc`` of the train command (``configs/anomaly.py:mcmc``, ``config.trainer``).
Same energy network (``config.energy``: the same autoencoder energy, from the same
pretraining), same optimiser, same energy loss, clip and gamma as DxMI's energy step
(``dxmi.energy_step``); only the negatives differ.  They come from **short-run Langevin
chains** that start where DxMI's chains start (the provider's ``x0``: training rows diffused
by ``data.start_noise``; or the prior draw), one fresh set per iteration:

    x <- P( x - (eta / T) grad E(x) + sqrt(2 eta) eps ),   eps ~ N(0, I)

for ``mcmc.steps`` steps, where P projects onto the unit sphere for sphere inputs (as the
policy does) and is the identity otherwise.  The target exp(-E / T) is DxMI's: its policy
maximises -E + tau1 x (entropy per coordinate), whose optimum is exp(-D E / tau1), so the
temperature is T = ``config.dxmi.tau1`` / D unless ``mcmc.temperature`` > 0 sets it.  The step
size is ``mcmc.step_size`` in units of the data's scale squared (provider.py): eta =
step_size x scale^2, so the chains move by sqrt(2 step_size) data scales per step whatever
the data.  Defaults: 20 steps, step_size 0.01.

The policy and value of the state are carried along untouched (the checkpoint layout is
DxMI's); the state's step, RNG and non-finite counters advance as in ``dxmi.make_train_step``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dxmi_jax import dxmi


def temperature(config, dim: int) -> float:
  t = float(config.mcmc.temperature)
  return t if t > 0 else float(config.dxmi.tau1) / dim


def langevin(energy_apply, params, x, key, *, steps: int, eta: float, temp: float, project=lambda x: x):
  """``steps`` projected Langevin steps on exp(-E / temp) from x (no parameter gradient)."""
  params = jax.lax.stop_gradient(params)
  grad_x = jax.grad(lambda xx: jnp.sum(energy_apply(params, xx, None)))
  drift = eta / max(temp, 1e-30)

  def body(i, x):
    eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
    return project(x - drift * grad_x(x) + jnp.sqrt(2.0 * eta) * eps)

  return jax.lax.fori_loop(0, steps, body, x)


def negatives_fn(exp):
  """``(energy_params, x0, key) -> x_neg``: the Langevin negatives of ``exp``'s config."""
  c = exp.config
  dim = int(exp.data_shape[1])
  scale = float(getattr(exp.data, "scale", 1.0))
  kw = dict(
    steps=int(c.mcmc.steps),
    eta=float(c.mcmc.step_size) * scale**2,
    temp=temperature(c, dim),
    project=exp.policy.project,
  )
  return lambda params, x0, key: langevin(exp.nets.energy_apply, params, x0, key, **kw)


def make_train_step(exp, rules=None):
  """``train_step(state, batch) -> (state, metrics)`` on a DxMIState: Langevin negatives, then
  one energy step; the iteration is skipped (state kept) when anything is non-finite."""
  del rules  # one replicated energy: nothing to shard on the CPU benchmarks
  negatives = negatives_fn(exp)
  energy_apply, policy, cfg = exp.nets.energy_apply, exp.policy, exp.dxmi

  def train_step(state, batch):
    key = jax.random.fold_in(state.rng, state.step)
    k_prior, k_chain = jax.random.split(key)
    x_data = batch["x"]
    x0 = batch["x0"] if "x0" in batch else policy.prior(k_prior, x_data.shape)
    x_neg = negatives(state.energy.params, x0, k_chain)
    energy, aux = dxmi.energy_step(state.energy, energy_apply, x_data, x_neg, None, cfg)
    ok = jnp.isfinite(aux["d_loss"]) & jnp.isfinite(aux["grad_norm"]) & jnp.all(jnp.isfinite(x_neg))
    run = jnp.where(ok, 0, state.consecutive_skips + 1)
    new = state.replace(
      step=state.step + 1,
      energy=jax.tree.map(lambda n, o: jnp.where(ok, n, o), energy, state.energy),
      skipped=state.skipped + (~ok).astype(jnp.int32),
      consecutive_skips=run,
      max_skip_run=jnp.maximum(state.max_skip_run, run),
      nonfinite_mask=jnp.where(ok, state.nonfinite_mask, 1).astype(jnp.int32),
    )
    metrics = {
      "ebm/d_loss": aux["d_loss"],
      "ebm/pos_e": aux["pos_e"],
      "ebm/neg_e": aux["neg_e"],
      "ebm/reg": aux["reg"],
      "ebm/grad_norm": aux["grad_norm"],
      "nonfinite/skipped_total": new.skipped,
      "nonfinite/ebm/d_loss": (~ok).astype(jnp.int32),
    }
    return new, metrics

  return train_step
