"""Building blocks shared by the image networks (NHWC, PyTorch numerics and initialisers).

Each layer mirrors one PyTorch layer of the official code, so its weights load by
a fixed transposition (``dxmi_jax.convert``):

* ``Conv2d``: params ``kernel`` (kH, kW, I, O) <- torch (O, I, kH, kW), ``bias``.
* ``Dense``: params ``kernel`` (in, out) <- torch (out, in), ``bias``.
* ``GroupNorm``: params ``scale``/``bias`` <- ``weight``/``bias``.  Statistics are
  always computed in float32 with the biased variance E[(x - mean)^2] (as torch),
  and the result is cast back to the input dtype (as consistency-models'
  ``GroupNorm32``).
* ``Embed``: param ``embedding`` (num, dim) <- ``weight``.

Initialisers follow PyTorch's defaults (weight and bias ~ U(-1/sqrt(fan_in),
1/sqrt(fan_in)); embeddings N(0, 1)) because the value network is trained from
scratch; layers the official code zero-initialises take ``zero_init=True``.
Parameters are always float32; ``dtype`` is the computation (activation) dtype.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dxmi_jax.models import conv

Dtype = Any

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) == torch's kaiming_uniform_(a=sqrt(5)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable:
  """torch's default bias init of a layer with ``fan_in`` inputs."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def swish(x):
  """x * sigmoid(x) (the DDPM ``nonlinearity``; identical to SiLU)."""
  return x * jax.nn.sigmoid(x)


def time_rows(t, batch: int):
  """The time input as float32 (1,) when it is one value for the whole batch, else (batch,)."""
  t = jnp.asarray(t, jnp.float32)
  return t.reshape(1) if t.size == 1 else jnp.broadcast_to(t, (batch,))


def time_features(embed: Callable, t, batch: int):
  """``embed`` of the time input as (batch, dim): once when t is one value, else per sample.

  A rollout step hands every sample the same t (shape (1,)): the features (sines and cosines,
  slow on a CPU) are computed once and broadcast, the same numbers as computing them per row
  (what XLA then does with the identical rows, e.g. run the time MLP on one of them, can change
  the last float32 bits).
  """
  feats = embed(time_rows(t, batch))
  return jnp.broadcast_to(feats, (batch,) + feats.shape[1:])


def canonical_dtype(dtype) -> jnp.dtype:
  """Accepts a dtype or its name ("float32", "bfloat16") as stored in configs."""
  return jnp.dtype(dtype)


class Conv2d(nn.Module):
  """torch.nn.Conv2d on NHWC input; ``padding`` is torch's symmetric int padding."""

  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 0
  use_bias: bool = True
  zero_init: bool = False
  dtype: Dtype = jnp.float32
  conv_mode: str = "auto"  # models/conv.py MODES

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    fan_in = cin * k * k
    zeros = nn.initializers.zeros
    kernel = self.param(
      "kernel", zeros if self.zero_init else torch_kernel_init, (k, k, cin, self.features), jnp.float32
    )
    # models/conv.py: the same convolution, with a gradient XLA:CPU runs fast inside scans
    y = conv.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding, self.conv_mode)
    if self.use_bias:
      bias = self.param("bias", zeros if self.zero_init else torch_bias_init(fan_in), (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class Dense(nn.Module):
  """torch.nn.Linear."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_kernel_init, (fan_in, self.features), jnp.float32)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", torch_bias_init(fan_in), (self.features,), jnp.float32).astype(self.dtype)
    return y


class Embed(nn.Module):
  """torch.nn.Embedding (N(0, 1) init unless ``embedding_init`` is given)."""

  num_embeddings: int
  features: int
  embedding_init: Callable = nn.initializers.normal(1.0)

  @nn.compact
  def __call__(self, ids):
    table = self.param("embedding", self.embedding_init, (self.num_embeddings, self.features), jnp.float32)
    return jnp.take(table, ids, axis=0)


class GroupNorm(nn.Module):
  """torch.nn.GroupNorm(num_groups, C, eps, affine=True), stats in float32."""

  num_groups: int = 32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels are not divisible by {self.num_groups} groups")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    h = x.astype(jnp.float32).reshape(x.shape[:-1] + (self.num_groups, c // self.num_groups))
    axes = tuple(range(1, h.ndim - 2)) + (h.ndim - 1,)
    mean = h.mean(axes, keepdims=True)
    var = jnp.square(h - mean).mean(axes, keepdims=True)
    h = ((h - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    return (h * scale + bias).astype(x.dtype)


def upsample_nearest2x(x):
  """F.interpolate(scale_factor=2, mode="nearest") on NHWC."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2x2(x):
  """F.avg_pool2d(x, 2) on NHWC (even sizes; odd trailing rows/cols are dropped as torch)."""
  b, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4), dtype=jnp.float32).astype(x.dtype)


#: ``remat`` values of the networks: what a block keeps for the backward pass
REMAT_POLICIES = {
  "none": None,  # every activation is stored
  "blocks": jax.checkpoint_policies.nothing_saveable,  # only block inputs; block internals recomputed
}


def remat_block(block_cls, remat: str, static_argnums=()):
  """``block_cls`` itself, or wrapped in ``nn.remat`` under the jax.checkpoint policy ``remat``.

  Rematerialising each residual / attention block keeps only the block boundaries
  alive between the forward and the backward pass (one more block forward per
  backward) -- the large-batch UNet gradients of the policy update need that to
  fit.  Parameter names and values are unchanged.  ``static_argnums`` count
  ``self`` as 0 (flax's convention), e.g. a ``deterministic`` flag.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")
  if REMAT_POLICIES[remat] is None:
    return block_cls
  return nn.remat(block_cls, policy=REMAT_POLICIES[remat], static_argnums=static_argnums)
