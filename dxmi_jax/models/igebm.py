"""Value / energy network: ``TimeIndependentValue(IGEBMEncoderV2)`` of the official code, NHWC.

``IGEBMValue()(x, t=None, y=None)`` returns (B, 1) and ignores ``t``: one network
is V_t = E for all t (reference §4.1).  Architecture:

    conv1 3x3 -> lrelu(0.2) -> 6 x ResBlockV2 (nh, nh, 2nh, 2nh, 2nh, 2nh; blocks 0, 2, 4
    downsample) -> relu -> SUM over spatial positions (not a mean) -> linear -> out_scale

ResBlockV2: out = lrelu(film1(conv1(x))); out = film2(conv2(out)) + skip(x);
avg-pool 2x2 if downsampling (after the residual sum); lrelu(0.2).  ``skip`` is a
bias-free 1x1 conv when the width changes or the block downsamples.

With ``n_class`` set, the conv biases are dropped and a per-block
Embedding(n_class, 4 C) gives FiLM parameters (w1, w2, b1, b2), initialised to
w = 1 and b = 0.  Parameter names mirror the torch keys minus the ``net.`` prefix
(``blocks_2/skip_0`` <-> ``net.blocks.2.skip.0``).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dxmi_jax.models.layers import Conv2d, Dense, Embed, avg_pool2x2, remat_block

_ACTIVATIONS = {
  "linear": None,
  "relu": jax.nn.relu,
  "sigmoid": jax.nn.sigmoid,
  "softplus": jax.nn.softplus,
  "tanh": jnp.tanh,
  "swish": jax.nn.silu,
  "leakyrelu": lambda v: jax.nn.leaky_relu(v, 0.2),
}


def _film_init(key, shape, dtype=jnp.float32):
  """class_embed init of the official ResBlockV2: first half (weights) 1, second half (biases) 0."""
  del key
  half = shape[1] // 2
  return jnp.concatenate([jnp.ones((shape[0], half), dtype), jnp.zeros((shape[0], shape[1] - half), dtype)], axis=1)


def _lrelu(x):
  return jax.nn.leaky_relu(x, 0.2)


class ResBlockV2(nn.Module):
  out_ch: int
  downsample: bool = False
  n_class: Optional[int] = None
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x, y=None):
    cond = self.n_class is not None
    h = Conv2d(self.out_ch, 3, padding=1, use_bias=not cond, conv_mode=self.conv_mode, name="conv1")(x)
    if cond:
      w1, w2, b1, b2 = jnp.split(
        Embed(self.n_class, 4 * self.out_ch, _film_init, name="class_embed")(y)[:, None, None, :], 4, axis=-1
      )
      h = w1 * h + b1
    h = Conv2d(self.out_ch, 3, padding=1, use_bias=not cond, conv_mode=self.conv_mode, name="conv2")(_lrelu(h))
    if cond:
      h = w2 * h + b2
    if x.shape[-1] != self.out_ch or self.downsample:
      x = Conv2d(self.out_ch, 1, use_bias=False, conv_mode=self.conv_mode, name="skip_0")(x)
    h = h + x
    if self.downsample:
      h = avg_pool2x2(h)
    return _lrelu(h)


class IGEBMValue(nn.Module):
  """TimeIndependentValue(IGEBMEncoderV2(keepdim=False, learn_out_scale=True, ...))."""

  nh: int = 128
  in_chan: int = 3
  out_chan: int = 1
  n_class: Optional[int] = None
  learn_out_scale: bool = True
  out_activation: str = "linear"
  remat: str = "none"  # layers.REMAT_POLICIES: "blocks" recomputes each block in the backward pass
  conv_mode: str = "auto"  # models/conv.py MODES: the convolution formulation (config.perf.conv)

  @nn.compact
  def __call__(self, x, t=None, y=None, deterministic: bool = True):
    del t, deterministic  # time-independent; no dropout
    if (self.n_class is not None) and y is None:
      raise ValueError(f"IGEBMValue with n_class={self.n_class} needs class labels y")
    if self.n_class is None:
      y = None  # the official wrapper passes y, but an unconditional net ignores it
    if self.out_activation not in _ACTIVATIONS:
      raise ValueError(f"out_activation must be one of {sorted(_ACTIVATIONS)}, got {self.out_activation!r}")
    nh = self.nh
    block_cls = remat_block(ResBlockV2, self.remat)
    h = _lrelu(Conv2d(nh, 3, padding=1, conv_mode=self.conv_mode, name="conv1")(x))
    for i, (ch, down) in enumerate(
      [(nh, True), (nh, False), (2 * nh, True), (2 * nh, False), (2 * nh, True), (2 * nh, False)]
    ):
      h = block_cls(ch, down, self.n_class, conv_mode=self.conv_mode, name=f"blocks_{i}")(h, y)
    h = jax.nn.relu(h).sum(axis=(1, 2))  # keepdim=False: sum, not mean
    out = Dense(self.out_chan, name="linear")(h)
    if self.learn_out_scale:
      out = Dense(1, name="out_scale")(out)
    act = _ACTIVATIONS[self.out_activation]
    return out if act is None else act(out)


def igebm_nh128() -> ml_collections.ConfigDict:
  """The value net of every released image config: 5,134,595 params."""
  return ml_collections.ConfigDict(
    dict(nh=128, in_chan=3, out_chan=1, n_class=None, learn_out_scale=True, out_activation="linear", remat="none")
  )
