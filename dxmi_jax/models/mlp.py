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


def sinusoidal_embedding(t, dim: int):
  """[sin, cos] embedding with frequencies exp(-k ln(1e4) / (half - 1))."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimeMLP(nn.Module):
  """``Dense -> SiLU -> ... -> Dense`` on ``[x, time feature]``; returns (B, out_dim)."""

  out_dim: int
  hidden: Sequence[int] = (128, 128, 128)
  time_scale: float = 1.0
  time_embed_dim: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, y=None, deterministic=True):
    del y, deterministic  # unconditional, no dropout
    b = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t), (b,)).astype(jnp.float32) * self.time_scale
    if self.time_embed_dim:
      tfeat = sinusoidal_embedding(t * 1000.0, self.time_embed_dim)
    else:
      tfeat = t[:, None]
    h = jnp.concatenate([x.reshape(b, -1).astype(jnp.float32), tfeat], axis=-1).astype(self.dtype)
    for i, width in enumerate(self.hidden):
      h = nn.silu(nn.Dense(width, dtype=self.dtype, name=f"dense_{i}")(h))
    out = nn.Dense(self.out_dim, dtype=self.dtype, name=f"dense_{len(self.hidden)}")(h)
    return out.astype(jnp.float32).reshape((b,) + ((self.out_dim,) if self.out_dim > 1 else (1,)))
