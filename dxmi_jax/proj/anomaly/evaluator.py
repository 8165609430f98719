"""Training-only diagnostics of an anomaly run (evaluator ``anomaly``): never a test split.

From the held-out validation part of the training normals (``config.data.val_fraction``,
provider.py) and the trainer's negatives (the policy's rollout; the Langevin chains of the
``mcmc`` trainer) from the run's own chain starts (a fixed stream, the same at every
evaluation):

  nn_neg_to_val    mean distance from each negative x_T to its nearest validation normal
  nn_val_to_fit    the same from each validation normal to the fit rows: the data's own scale
  nn_start_to_val  the same for the chain starts x_0: how far the chains have to go
  energy_val       mean energy of the validation normals
  energy_neg       mean energy of the negatives (energy_gap = energy_neg - energy_val)
  auroc_val_vs_neg AUROC of the energy separating negatives from validation normals

Distances are root-mean-square per coordinate (Euclidean distance / sqrt(D)).  The sigmas of
the policy are in every training record (``sigma/sigma``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax import dxmi
from dxmi_jax.proj.anomaly import mcmc, metrics

_TAG = 1  # the evaluator's own chain-start stream (training uses tag 0)
_MAX_ROWS = 2000


def nn_rms(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> float:
  """Mean over rows of a of the distance to the nearest row of b, divided by sqrt(D)."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  b2 = jnp.sum(b * b, -1)
  out = []
  for i in range(0, a.shape[0], chunk):
    x = a[i : i + chunk]
    d2 = jnp.sum(x * x, -1)[:, None] - 2.0 * x @ b.T + b2[None, :]
    out.append(jnp.sqrt(jnp.maximum(jnp.min(d2, 1), 0.0)))
  return float(jnp.mean(jnp.concatenate(out)) / np.sqrt(a.shape[1]))


class AnomalyEvaluator:
  name = "anomaly"

  def __init__(self, exp):
    self.exp = exp
    data = exp.data
    self.val = data.val[:_MAX_ROWS]
    if self.val.shape[0] < 2:
      raise ValueError(
        "the anomaly evaluator needs validation rows: config.data.val_fraction must hold out at least 2 rows"
      )
    n = self.val.shape[0]
    self.fit = data.data.points
    rng = np.random.default_rng((data.seed, 13))
    self.fit_ref = self.fit[rng.choice(self.fit.shape[0], min(self.fit.shape[0], 20000), replace=False)]
    if data.start == "data":
      self.x0 = data.starts(0, n, tag=_TAG)
    else:
      self.x0 = np.asarray(exp.policy.prior(jax.random.PRNGKey(data.seed + 17), (n,) + tuple(exp.data_shape[1:])))
    self.noise = np.asarray(
      jax.random.normal(jax.random.PRNGKey(data.seed + 19), (exp.policy.num_steps, n) + tuple(exp.data_shape[1:]))
    )
    if exp.config.get("trainer", "dxmi") == "mcmc":
      langevin = mcmc.negatives_fn(exp)
      key = jax.random.PRNGKey(data.seed + 23)
      self._negatives = jax.jit(lambda state: langevin(state.energy.params, jnp.asarray(self.x0), key))
    else:
      rollout = functools.partial(dxmi.rollout, exp.policy)
      self._negatives = jax.jit(
        lambda state: rollout(state.policy.params, jnp.asarray(self.x0), jnp.asarray(self.noise)).final
      )
    self._energy = jax.jit(lambda state, x: exp.energy_fn(state)(x))

  @functools.cached_property
  def _data_scale(self):
    return nn_rms(self.val, self.fit_ref), nn_rms(self.x0, self.val)

  def negatives(self, state) -> np.ndarray:
    return np.asarray(self._negatives(state))

  def __call__(self, state, step, final=False, workdir=None, writer=None):
    del step, final, workdir, writer
    state = jax.device_get(state)
    neg = self.negatives(state)
    e_val = np.asarray(self._energy(state, jnp.asarray(self.val)))
    e_neg = np.asarray(self._energy(state, jnp.asarray(neg)))
    val_to_fit, start_to_val = self._data_scale
    return {
      "nn_neg_to_val": nn_rms(neg, self.val),
      "nn_val_to_fit": val_to_fit,
      "nn_start_to_val": start_to_val,
      "energy_val": float(np.mean(e_val)),
      "energy_neg": float(np.mean(e_neg)),
      "energy_gap": float(np.mean(e_neg) - np.mean(e_val)),
      "auroc_val_vs_neg": metrics.auroc(np.r_[np.zeros(len(e_val)), np.ones(len(e_neg))], np.r_[e_val, e_neg]),
    }
