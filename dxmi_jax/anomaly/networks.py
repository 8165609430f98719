"""Networks of the anomaly-detection experiments (the EV trainer's energy f, and feature maps).

* ``energy_mlp``: f(x) = MLP(x) for vector features, with **no time input** (the EV trainer's
  energy sees only x; its dummy time argument is ignored).  The same network is the energy of
  the MCMC-trained EBM baseline, so the two detectors differ only in how they were trained.
* ``conv_map``: a fully convolutional network over (H, W, C) feature maps (the paper's MVTec
  protocol runs on frozen backbone feature maps).  With ``out_channels=1`` it is an energy
  or value: a per-location map e(x)[h, w] reduced to one number per sample by its *mean* (so the
  training energy is an average of local energies and does not grow with H*W).  With
  ``out_channels=C`` (``reduce="none"``) it is the policy's epsilon network.  Time enters, as in
  ``TimeMLP``, as one extra constant input channel t * time_scale (``time_scale=0``: none).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from dxmi_jax.models import registry


class EnergyMLP(nn.Module):
  """``Dense -> SiLU -> ... -> Dense(1)`` on x; the time input is accepted and ignored."""

  hidden: Sequence[int] = (128, 128)
  out_dim: int = 1
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, t=None, y=None, deterministic=True):
    del t, y, deterministic
    b = x.shape[0]
    h = x.reshape(b, -1).astype(jnp.float32)
    for i, width in enumerate(self.hidden):
      h = nn.silu(nn.Dense(width, name=f"dense_{i}")(h))
    return nn.Dense(self.out_dim, name=f"dense_{len(self.hidden)}")(h).reshape(b, self.out_dim)


class ConvMap(nn.Module):
  """3x3 conv -> SiLU stacks on (B, H, W, C) [+ a time channel], then a 1x1 conv head.

  ``__call__`` returns (B, 1), the mean of the per-location map, when ``reduce="mean"``, else
  the (B, H, W, out_channels) map; ``energy_map`` returns the (B, H, W) map of channel 0.
  """

  out_channels: int = 1
  hidden: int = 64
  depth: int = 2
  kernel: int = 3
  time_scale: float = 0.0
  reduce: str = "mean"
  dtype: str = "float32"

  def setup(self):
    self.convs = [
      nn.Conv(self.hidden, (self.kernel, self.kernel), padding="SAME", name=f"conv_{i}") for i in range(self.depth)
    ]
    self.head = nn.Conv(self.out_channels, (1, 1), name="head")

  def _map(self, x, t):
    b = x.shape[0]
    h = x.astype(jnp.float32)
    if self.time_scale:
      tt = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(-1), (b,)) * self.time_scale
      h = jnp.concatenate([h, jnp.broadcast_to(tt[:, None, None, None], h.shape[:3] + (1,))], -1)
    for conv in self.convs:
      h = nn.silu(conv(h))
    return self.head(h)

  def energy_map(self, x, t=None):
    return self._map(x, 0.0 if t is None else t)[..., 0]

  def __call__(self, x, t=None, y=None, deterministic=True):
    del y, deterministic
    out = self._map(x, 0.0 if t is None else t)
    if self.reduce == "none":
      return out
    return jnp.mean(out[..., 0], axis=(1, 2)).reshape(x.shape[0], 1)


def _energy_mlp_config():
  c = ml_collections.ConfigDict()
  c.hidden = (128, 128)
  c.out_dim = 1
  c.dtype = "float32"
  return c


def _conv_map_config():
  c = ml_collections.ConfigDict()
  c.out_channels = 1
  c.hidden = 64
  c.depth = 2
  c.kernel = 3
  c.time_scale = 0.0
  c.reduce = "mean"
  c.dtype = "float32"
  return c


def _vector_inputs(cfg, batch):
  del cfg
  return jnp.zeros((batch, 2), jnp.float32), jnp.zeros((batch,), jnp.float32), None


def _map_inputs(cfg, batch):
  del cfg
  return jnp.zeros((batch, 4, 4, 8), jnp.float32), jnp.zeros((batch,), jnp.float32), None


registry.register("energy_mlp", EnergyMLP, _energy_mlp_config, _vector_inputs)
registry.register("conv_map", ConvMap, _conv_map_config, _map_inputs)
