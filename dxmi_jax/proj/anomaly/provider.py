"""The anomaly project's data provider: batches of normal rows, and where the chains start.

``AnomalyData`` is the core's ``VectorDataProvider`` over the transformed fit rows (data.py)
plus two things DxMI needs here:

* ``x0``, the chain starts (``config.data.start``): "prior" leaves them to the policy's prior
  draw (N(0, I), projected onto the sphere when the policy lives there); "data" starts every
  chain from a training row diffused by ``data.start_noise`` x ``scale`` (per-coordinate std,
  in ``data.start_steps`` moves, along the sphere for sphere inputs, ``data.diffuse``).
* ``scale``, the data's own per-coordinate scale: the RMS over rows and coordinates of the fit
  rows' deviation from their mean (1 for z-scored tables; on the sphere it ranges from 2e-3
  for near-identical image embeddings to 0.04 for feature-map locations), so that one config
  sets the start noise and the policy's initial sigmas for any data (``relative_scales``).  The
  rows are drawn independently of the batch's positives.  Like the batches, the starts are a
  pure function of (seed, step).
* ``val``: the held-out ``data.val_fraction`` of the training rows, for the training-only
  diagnostics of the evaluator (never a test split).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from dxmi_jax import parallel
from dxmi_jax.data import VectorDataProvider
from dxmi_jax.proj.anomaly import data as anomaly_data

STARTS = ("prior", "data")


def data_scale(x: np.ndarray) -> float:
  """RMS over rows and coordinates of x's deviation from its mean row."""
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  return float(np.sqrt(np.mean(np.square(x - x.mean(0)))))


def relative_scales(exp, workdir, pretrained):
  """A training stage (after the autoencoder's pretraining): the starting point in units of
  the data (``with_relative_scales``)."""
  del workdir
  if not isinstance(exp.data, AnomalyData):
    return pretrained
  return with_relative_scales(exp, exp.abstract_state() if pretrained is None else pretrained, exp.data)


#: rows of the chain-start stream (tag 2) on which the energy's initial scale is set
_SCALE_ROWS = 512


def with_relative_scales(exp, state, data: "AnomalyData"):
  """The starting point in units of the data.

  * The residual policy's initial sigmas (and the AVR scales the EV trainer starts from them)
    become ``config.policy.init_sigma`` x ``data.scale``.
  * An energy with a learnt scale s (``ae_energy``) whose weights are known (pretrained) gets
    s such that its mean energy on chain starts is 1 / (2 gamma), the value at which the
    square penalty gamma E^2 balances the contrastive push on negatives (1 without gamma):
    the energy starts at O(1) on any data, neither dwarfed by tau1 log sigma nor pulled down
    by the penalty.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  c = exp.config
  out = state
  if c.policy.kind == "residual" and c.policy.get("init_sigma", -1.0) > 0:
    log_sigma = jnp.full((exp.policy.num_steps,), np.log(c.policy.init_sigma * data.scale), jnp.float32)
    out = out.replace(policy=out.policy.replace(params=dict(out.policy.params, log_sigma=log_sigma)))
    if exp.dxmi.avr_init == "sigma":
      out = out.replace(velocity_scale=jnp.exp(log_sigma)[::-1])
  energy = out.energy
  if energy is not None and "scale" in energy.params:
    if not any(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(energy.params)):
      params = dict(energy.params, scale=jnp.float32(1.0))
      e = float(jnp.mean(exp.nets.energy_apply(params, jnp.asarray(data.starts(0, _SCALE_ROWS, tag=2)), None)))
      target = 0.5 / exp.dxmi.gamma if exp.dxmi.gamma > 0 else 1.0
      s = jnp.float32(np.sqrt(target / max(e, 1e-30)))
      out = out.replace(energy=energy.replace(params=dict(energy.params, scale=s)))
  return out


class AnomalyData(VectorDataProvider):
  def __init__(self, config, data=None, transform=None, val=None):
    if data is None:
      data, transform, val = anomaly_data.vector_data(config)
    super().__init__(config, data=data, transform=transform)
    self.val = np.zeros((0, self.shape[1]), np.float32) if val is None else val
    d = config.data
    self.start, self.start_noise, self.start_steps = d.start, float(d.start_noise), int(d.start_steps)
    self.sphere = d.normalize == "sphere"
    self.seed = int(config.training.seed)
    self.scale = data_scale(self.data.points)

  @classmethod
  def from_array(cls, config, x: np.ndarray, seed: int):
    """A provider over already-transformed rows x (the benchmark's in-process runs)."""
    return cls(config, data=anomaly_data.ArrayData(x, seed), val=None)

  def starts(self, step: int, size: int, tag: int = 0) -> np.ndarray:
    """(size, D) chain starts of global batch ``step`` (``tag`` separates other streams)."""
    pts = self.data.points
    rng = np.random.default_rng((self.seed, 11, tag, step))
    rows = pts[rng.integers(0, pts.shape[0], size)]
    return anomaly_data.diffuse(rows, self.start_noise * self.scale, self.start_steps, self.sphere, rng)

  def local_batch(self, step: int, size: Optional[int] = None):
    out = super().local_batch(step, size)
    if self.start == "data":
      size = size or self.global_batch
      lo, hi = parallel.process_slice(size)
      out["x0"] = self.starts(step, size)[lo:hi]
    return out
