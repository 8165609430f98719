"""Evaluation of vector-data runs: SW distance, energy AUC and the paper-style figure.

Protocol (documented in docs/gaussians2d.md):
* SW: p = 2, ``config.eval.sw_projections`` (1,000) random directions, ``config.eval.num_samples``
  (10,000) policy samples, each compared with ``config.eval.sw_draws`` independent data draws
  of the same size: ``sw`` is the mean over the draws and ``sw_std`` their spread.  One draw
  is a noisy statistic (on a 7-component mixture, ten pairs of 10,000 points gave floors from
  0.031 to 0.093).  ``sw_floor`` (``sw_floor_std``) is the same statistic between as many
  pairs of independent data draws: what a perfect sampler scores.
* AUC: ROC-AUC of -E(x) with data (label 1) against uniform noise on
  [noise_low, noise_high]^D (label 0), 10,000 each.  For ``8gaussians``, ``auc_ideal``
  scores the same two sets with the true log-density: the best any energy can do.

The evaluator is built once per run: its sampler is compiled once, and the data draws'
sorted projections, the floor and the ideal AUC, which do not depend on the model, are
computed once.  The samples of an evaluation at step 0 (``config.training.eval_at_start``)
are kept, so the final figure shows the starting sampler (the pretrained DDPM when
fine-tuning) beside the trained one and its energy.
"""

from __future__ import annotations

import functools
import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax import generation, io
from dxmi_jax.data import toy2d
from dxmi_jax.metrics import vector

#: data-draw seeds: the SW references use 1, 2, ...; the floor pairs start here
_FLOOR_SEED = 1000
_NOISE_SEED = 3


def _batched(fn, x, batch=10000):
  return np.concatenate([np.asarray(fn(jnp.asarray(x[i : i + batch]))) for i in range(0, len(x), batch)])


class VectorEvaluator:
  """SW (mean ± std over data draws) with its floor, AUC with the ideal, and the 2D figure."""

  name = "vector"

  def __init__(self, exp):
    self.exp = exp
    ec = exp.config.eval
    self.n, self.projections, self.draws = ec.num_samples, ec.sw_projections, max(1, ec.sw_draws)
    self.dim = exp.data_shape[1]
    self._gen = jax.jit(functools.partial(generation.generate, exp.policy, num=self.n, sample_shape=(self.dim,)))
    self._energy = jax.jit(lambda state, x: exp.energy_fn(state)(x))
    self.start_samples: Optional[np.ndarray] = None

  # ------------------------------------------------------------- model-free parts, once
  @functools.cached_property
  def _references(self):
    data = self.exp.data.data
    return [vector.sorted_projections(data.sample(self.n, seed=1 + i), self.projections) for i in range(self.draws)]

  @functools.cached_property
  def floor(self) -> Dict[str, float]:
    data = self.exp.data.data
    sws = [
      vector.sw_from_sorted(
        vector.sorted_projections(data.sample(self.n, seed=_FLOOR_SEED + 2 * i), self.projections),
        vector.sorted_projections(data.sample(self.n, seed=_FLOOR_SEED + 2 * i + 1), self.projections),
      )
      for i in range(self.draws)
    ]
    return {"sw_floor": float(np.mean(sws)), "sw_floor_std": float(np.std(sws))}

  @functools.cached_property
  def _auc_sets(self):
    ec = self.exp.config.eval
    ref = self.exp.data.data.sample(self.n, seed=1)
    noise = vector.uniform_box(self.n, self.dim, ec.noise_low, ec.noise_high, seed=_NOISE_SEED)
    ideal = None
    if self.exp.config.data.name == "8gaussians":
      ideal = vector.auc(toy2d.log_density_8gaussians(ref), toy2d.log_density_8gaussians(noise))
    return ref, noise, ideal

  # ------------------------------------------------------------------------ evaluate
  def samples(self, state) -> np.ndarray:
    key = jax.random.PRNGKey(self.exp.config.training.seed + 12345)
    return np.asarray(self._gen(state.policy.params, key))

  def __call__(
    self, state, step: int, *, final: bool = False, workdir: Optional[str] = None, writer=None
  ) -> Dict[str, float]:
    del writer
    samples = self.samples(state)
    ps = vector.sorted_projections(samples, self.projections)
    sws = [vector.sw_from_sorted(ps, ref) for ref in self._references]
    out = {"sw": float(np.mean(sws)), "sw_std": float(np.std(sws)), **self.floor}
    ref, noise, ideal = self._auc_sets
    energy = functools.partial(self._energy, state)
    e_data, e_noise = _batched(energy, ref), _batched(energy, noise)
    finite = np.all(np.isfinite(e_data)) and np.all(np.isfinite(e_noise))
    out["auc"] = vector.auc(-e_data, -e_noise) if finite else float("nan")
    if ideal is not None:
      out["auc_ideal"] = ideal
    if step == 0:
      self.start_samples = samples
    if final and workdir is not None and self.dim == 2 and jax.process_index() == 0:
      plot_2d(self.exp, state, samples, os.path.join(workdir, "figure.png"), start=self.start_samples)
    return out


def plot_2d(exp, state, samples, path, start=None, lim=4.0, res=200):
  """[starting samples,] the energy heat map with the samples, and V(., t) for t = 0..T."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  T = exp.dxmi.num_steps
  g = np.linspace(-lim, lim, res, dtype=np.float32)
  grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
  energy = np.asarray(jax.jit(exp.energy_fn(state))(jnp.asarray(grid))).reshape(res, res)
  value = jax.jit(lambda x, t: exp.nets.value_apply(state.value.params, x, jnp.full((x.shape[0],), t), None))
  panels = ([("start", None)] if start is not None else []) + [("energy", None)] + [("value", t) for t in range(T + 1)]
  fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8))
  for ax, (kind, t) in zip(axes, panels):
    if kind == "start":
      ax.set_facecolor("black")
      s = start[:2000]
      ax.scatter(s[:, 0], s[:, 1], s=1, c="w", alpha=0.5)
      ax.set_title(f"step 0 samples (T={T})")
    elif kind == "energy":
      ax.imshow(energy, extent=(-lim, lim, -lim, lim), origin="lower", cmap="viridis")
      s = samples[:2000]
      ax.scatter(s[:, 0], s[:, 1], s=1, c="w", alpha=0.5)
      ax.set_title("E(x) + final samples")
    else:
      v = np.asarray(value(jnp.asarray(grid), t)).reshape(res, res)
      ax.imshow(v, extent=(-lim, lim, -lim, lim), origin="lower", cmap="viridis")
      ax.set_title(f"V(x, {t})" + (" = E" if t == T and exp.energy_module is None else ""))
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  io.atomic_write(path, lambda f: fig.savefig(f, dpi=80, format="png"), ".png")
  plt.close(fig)
