"""Evaluation of vector-data runs: SW distance, energy AUC and the paper-style figure.

Protocol (documented in the README):
* SW: p = 2, ``config.eval.sw_projections`` (1,000) random directions, ``config.eval.num_samples``
  (10,000) policy samples against as many fresh data points.  ``sw_floor`` is the same
  statistic between two independent data samples of that size (what a perfect sampler scores).
* AUC: ROC-AUC of -E(x) with data (label 1) against uniform noise on
  [noise_low, noise_high]^D (label 0), 10,000 each.  For ``8gaussians``, ``auc_ideal``
  scores the same two sets with the true log-density: the best any energy can do.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax import sampling
from dxmi_jax.data import toy2d
from dxmi_jax.metrics import vector


def _batched(fn, x, batch=10000):
  return np.concatenate([np.asarray(fn(jnp.asarray(x[i:i + batch]))) for i in range(0, len(x), batch)])


def evaluate_vector(exp, state, figure_dir=None):
  ec = exp.config.eval
  n = ec.num_samples
  dim = exp.data_shape[1]
  gen = jax.jit(lambda params, key: sampling.generate(exp.policy, params, key, n, (dim,)))
  samples = np.asarray(gen(state.policy.params, jax.random.PRNGKey(exp.config.training.seed + 12345)))
  ref = exp.data.data.sample(n, seed=1)
  ref2 = exp.data.data.sample(n, seed=2)
  noise = vector.uniform_box(n, dim, ec.noise_low, ec.noise_high, seed=3)
  energy = jax.jit(exp.energy_fn(state))
  e_data, e_noise = _batched(energy, ref), _batched(energy, noise)
  out = {"sw": vector.sliced_wasserstein(samples, ref, ec.sw_projections),
         "sw_floor": vector.sliced_wasserstein(ref2, ref, ec.sw_projections)}
  if np.all(np.isfinite(e_data)) and np.all(np.isfinite(e_noise)):
    out["auc"] = vector.auc(-e_data, -e_noise)
  else:
    out["auc"] = float("nan")
  if exp.config.data.name == "8gaussians":
    out["auc_ideal"] = vector.auc(toy2d.log_density_8gaussians(ref), toy2d.log_density_8gaussians(noise))
  if figure_dir is not None and dim == 2 and jax.process_index() == 0:
    plot_2d(exp, state, samples, os.path.join(figure_dir, "figure.png"))
  return out


def plot_2d(exp, state, samples, path, lim=4.0, res=200):
  """Energy heat map with samples, and the value function V(., t) for t = 0..T."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  T = exp.cfg.num_steps
  g = np.linspace(-lim, lim, res, dtype=np.float32)
  grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
  energy = np.asarray(jax.jit(exp.energy_fn(state))(jnp.asarray(grid))).reshape(res, res)
  value = jax.jit(lambda x, t: exp.nets.value_apply(state.value.params, x, jnp.full((x.shape[0],), t), None))
  ncol = T + 2
  fig, axes = plt.subplots(1, ncol, figsize=(2.6 * ncol, 2.8))
  ax = axes[0]
  ax.imshow(energy, extent=(-lim, lim, -lim, lim), origin="lower", cmap="viridis")
  s = samples[:2000]
  ax.scatter(s[:, 0], s[:, 1], s=1, c="w", alpha=0.5)
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_title("E(x) + samples")
  for t in range(T + 1):
    v = np.asarray(value(jnp.asarray(grid), t)).reshape(res, res)
    axes[t + 1].imshow(v, extent=(-lim, lim, -lim, lim), origin="lower", cmap="viridis")
    axes[t + 1].set_title(f"V(x, {t})" + (" = E" if t == T and exp.energy_module is None else ""))
  for a in axes:
    a.set_xticks([])
    a.set_yticks([])
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=80)
  plt.close(fig)
  os.replace(tmp, path)
