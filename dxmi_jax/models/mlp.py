"""MLPs for vector data (the 2D experiment and the golden toy problem).

Both networks take the time as an extra input feature, like the official toy
networks: ``mlp(concat([x, time_feature(t)]))``.

* ``time_scale``: the scalar feature is ``t * time_scale`` (e.g. 1/T for an
  integer step, 1/1000 for a continuous DDPM time).
* ``time_embed_dim > 0`` replaces the scalar by a sinusoidal embedding of
  ``t * time_scale * 1000`` (useful for the epsilon network of a DDPM, whose
  time input spans 0..1000).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from dxmi_jax.models.layers import time_rows


def sinusoidal_embedding(t, dim: int):
  """[sin, cos] embedding with frequencies exp(-k ln(1e4) / (half - 1))."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeInputDense(nn.Module):
  """``nn.Dense`` on ``[x, time features]``, the same parameters and initialisation.

  When the time features are one row shared by the batch (a rollout step), the
  concatenation is not built: ``x K[:d] + f K[d:]``, the time part one row broadcast
  over the batch (XLA:CPU would otherwise fuse the sines and cosines into the
  concatenation and compute them again for every row).  Per-sample features take
  ``nn.Dense``'s own path, ``[x, f] K``.
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, feats):
    d = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (d + feats.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, feats, kernel, bias = (a.astype(self.dtype) for a in (x, feats, kernel, bias))
    if feats.shape[0] == x.shape[0]:
      y = jnp.dot(jnp.concatenate([x, feats], axis=-1), kernel)
    else:
      y = jnp.dot(x, kernel[:d]) + jnp.dot(feats, kernel[d:])
    return y + bias[None, :]


class TimeMLP(nn.Module):
  """``Dense -> SiLU -> ... -> Dense`` on ``[x, time feature]``; returns (B, out_dim).

  ``zero_out``: the last layer starts at zero (a residual policy's drift then starts at 0).
  """

  out_dim: int
  hidden: Sequence[int] = (128, 128, 128)
  time_scale: float = 1.0
  time_embed_dim: int = 0
  dtype: jnp.dtype = jnp.float32
  zero_out: bool = False

  @nn.compact
  def __call__(self, x, t, y=None, deterministic=True):
    del y, deterministic  # unconditional, no dropout
    b = x.shape[0]
    t = time_rows(t, b)  # (1,): one time for the whole batch (a rollout step), its features one row
    if self.time_embed_dim:
      tfeat = sinusoidal_embedding(t * self.time_scale * 1000.0, self.time_embed_dim)
    else:
      tfeat = (t * self.time_scale)[:, None]
    h = x.reshape(b, -1).astype(jnp.float32)
    for i, width in enumerate(tuple(self.hidden) + (self.out_dim,)):
      if i == 0:
        h = TimeInputDense(width, self.dtype, name="dense_0")(h, tfeat)
      else:
        last = self.zero_out and i == len(self.hidden)
        init = nn.initializers.zeros_init() if last else nn.linear.default_kernel_init
        h = nn.Dense(width, dtype=self.dtype, kernel_init=init, name=f"dense_{i}")(h)
      if i < len(self.hidden):
        h = nn.silu(h)
    return h.astype(jnp.float32).reshape((b,) + ((self.out_dim,) if self.out_dim > 1 else (1,)))


def mlp_default():
  """The registry's default config of ``mlp`` (TimeMLP)."""
  c = ml_collections.ConfigDict()
  c.out_dim = 2
  c.hidden = (128, 128, 128)
  c.time_scale = 1.0
  c.time_embed_dim = 0
  c.zero_out = False
  c.dtype = "float32"
  return c
