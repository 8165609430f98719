"""ADM / consistency-models UNet (``models/cm/unet.py::UNetModel``) and EDM preconditioning.

``karras_scalings`` / ``edm_denoise`` are the consistency-models ``KarrasDenoiser``
(sigma_data 0.5, no distillation): D(x, sigma, y) = c_skip x + c_out F(c_in x, 250 ln sigma, y).
``ADMUNet`` is the raw F; its numerics differ from the DDPM UNet in several places
(golden README A2, reference §4.3): [cos, sin] embedding with denominator ``half``,
GroupNorm eps 1e-5 in float32, qkv channels laid out (three, heads, d) with d^-1/4
on q and k, zero-initialised output convs, and the label embedding added to the
time embedding.  Submodule names mirror the torch keys (``input_blocks_3_1/qkv``
<-> ``input_blocks.3.1.qkv``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dxmi_jax.models import attention
from dxmi_jax.models.layers import (
  Conv2d,
  Dense,
  Embed,
  GroupNorm,
  avg_pool2x2,
  remat_block,
  time_features,
  upsample_nearest2x,
)

Dtype = Any
_GN_EPS = 1e-5
_LOG_TINY = float(np.log(np.float32(1e-44)))  # log of float32(1e-44) = 9.8e-45 (subnormal)


def karras_scalings(sigma, sigma_data: float = 0.5) -> Tuple[jnp.ndarray, ...]:
  """EDM (Karras et al.) preconditioning, as ``KarrasDenoiser.get_scalings`` + the noise input.

  Returns (c_skip, c_out, c_in, c_noise), each with the shape of ``sigma``;
  c_noise = 1000 * 0.25 * log(sigma + 1e-44) is the UNet's time input.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  sd2 = sigma_data**2
  c_skip = sd2 / (sigma**2 + sd2)
  c_out = sigma * sigma_data / jnp.sqrt(sigma**2 + sd2)
  c_in = 1.0 / jnp.sqrt(sigma**2 + sd2)
  # torch adds 1e-44 (a float32 subnormal) so that sigma = 0 maps to log(9.8e-45); XLA flushes
  # subnormals to zero, so that case is spelled out.  For normal sigma the add is a no-op.
  c_noise = 1000.0 * 0.25 * jnp.where(sigma == 0, _LOG_TINY, jnp.log(sigma))
  return c_skip, c_out, c_in, c_noise


def edm_denoise(unet_apply: Callable, x, sigma, y=None, sigma_data: float = 0.5):
  """D(x, sigma, y) = c_skip*x + c_out*F(c_in*x, c_noise, y) for NHWC x and per-sample sigma (B,).

  ``unet_apply(x, t, y)`` is the raw network F, e.g.
  ``lambda u, t, y: model.apply({"params": p}, u, t, y)``.
  """
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
  c_skip, c_out, c_in, c_noise = karras_scalings(sigma, sigma_data)
  b = (slice(None),) + (None,) * (x.ndim - 1)
  out = unet_apply(c_in[b] * x, c_noise, y)
  return c_skip[b] * x + c_out[b] * out


# ----------------------------------------------------------------------------------------------
# The network F(x, t, y).
# ----------------------------------------------------------------------------------------------


def adm_timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """consistency-models ``timestep_embedding``: [cos(t f), sin(t f)], f_k = max_period^(-k/half)."""
  half = dim // 2
  freqs = np.exp(np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half))
  args = jnp.asarray(t, jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class ResBlock(nn.Module):
  """``cm.unet.ResBlock`` (optionally scale-shift conditioned and/or resampling)."""

  out_ch: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  up: bool = False
  down: bool = False
  dtype: Dtype = jnp.float32
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x, emb, deterministic: bool = True):
    dt, c = self.dtype, self.out_ch
    h = nn.silu(GroupNorm(32, _GN_EPS, name="in_layers_0")(x))
    if self.up or self.down:  # resample h and x between the norm and the conv
      resample = upsample_nearest2x if self.up else avg_pool2x2
      h, x = resample(h), resample(x)
    h = Conv2d(c, 3, padding=1, dtype=dt, conv_mode=self.conv_mode, name="in_layers_2")(h)
    emb_out = Dense(2 * c if self.use_scale_shift_norm else c, name="emb_layers_1")(nn.silu(emb)).astype(h.dtype)[
      :, None, None, :
    ]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = GroupNorm(32, _GN_EPS, name="out_layers_0")(h) * (1 + scale) + shift
    else:
      h = GroupNorm(32, _GN_EPS, name="out_layers_0")(h + emb_out)
    h = nn.silu(h)
    if self.dropout > 0:
      h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = Conv2d(c, 3, padding=1, zero_init=True, dtype=dt, conv_mode=self.conv_mode, name="out_layers_3")(h)
    if x.shape[-1] != c:
      x = Conv2d(c, 1, dtype=dt, conv_mode=self.conv_mode, name="skip_connection")(x)
    return x + h


class AttentionBlock(nn.Module):
  """``cm.unet.AttentionBlock`` with ``QKVAttentionLegacy`` numerics.

  qkv channels are laid out (three, heads, d); q and k are each scaled by
  d^-1/4 before the product; the softmax is over keys and always in float32.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  query_chunk: int = 0  # models/attention.py: query rows per chunk (memory); 0 = all at once
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    nh = self.num_heads
    if c % nh:
      raise ValueError(f"attention: {c} channels are not divisible by {nh} heads")
    d = c // nh
    qkv = Conv2d(3 * c, 1, dtype=self.dtype, conv_mode=self.conv_mode, name="qkv")(
      GroupNorm(32, _GN_EPS, name="norm")(x)
    )
    q, k, v = jnp.moveaxis(qkv.reshape(b, hh * ww, 3, nh, d), 2, 0)  # each (B, S, heads, d)
    scale = 1.0 / math.sqrt(math.sqrt(d))
    k = k * scale

    def attend(q):  # (B, s, heads, d) queries -> (B, s, heads, d)
      w = jnp.einsum("bthd,bshd->bhts", q * scale, k)
      w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(self.dtype)
      return jnp.einsum("bhts,bshd->bthd", w, v)

    a = attention.over_query_chunks(attend, q, self.query_chunk).reshape(b, hh, ww, c)
    return x + Conv2d(c, 1, zero_init=True, dtype=self.dtype, conv_mode=self.conv_mode, name="proj_out")(a)


class Downsample(nn.Module):
  use_conv: bool = True
  dtype: Dtype = jnp.float32
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x):
    if not self.use_conv:
      return avg_pool2x2(x)
    return Conv2d(x.shape[-1], 3, stride=2, padding=1, dtype=self.dtype, conv_mode=self.conv_mode, name="op")(x)


class Upsample(nn.Module):
  use_conv: bool = True
  dtype: Dtype = jnp.float32
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x):
    x = upsample_nearest2x(x)
    if self.use_conv:
      x = Conv2d(x.shape[-1], 3, padding=1, dtype=self.dtype, conv_mode=self.conv_mode, name="conv")(x)
    return x


class ADMUNet(nn.Module):
  """``cm.unet.UNetModel``: raw F(x, t, y) on NHWC x; t is the noise conditioning (B,).

  For the EDM policy ``t = c_noise = 250 ln(sigma)`` and the input is already
  scaled by c_in (use ``edm_denoise``).  ``attention_resolutions`` are
  *feature-map resolutions* (as the ``attention_resolutions="32,16,8"`` string of
  ``create_model``); they become downsample factors ``image_size // r``.
  ``num_head_channels > 0`` fixes the head width (then ``num_heads`` is ignored).
  ``y`` (B,) int labels must be given iff ``num_classes`` is set.

  With ``dtype=bfloat16`` the torso (input/middle/output blocks) runs in
  bfloat16 while the embeddings, GroupNorm statistics, softmax and the output
  head stay float32, mirroring the official ``use_fp16`` path; parameters are
  always float32.
  """

  image_size: int = 64
  in_channels: int = 3
  model_channels: int = 192
  out_channels: int = 3
  num_res_blocks: int = 3
  attention_resolutions: Sequence[int] = (32, 16, 8)
  dropout: float = 0.0
  channel_mult: Sequence[float] = (1, 2, 3, 4)
  conv_resample: bool = True
  num_classes: Optional[int] = 1000
  num_heads: int = 4
  num_head_channels: int = 64
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  dtype: Dtype = jnp.float32
  remat: str = "none"  # layers.REMAT_POLICIES: "blocks" recomputes each block in the backward pass
  attention_chunk: int = 0  # attention over this many query rows at a time (models/attention.py); 0 = off
  conv_mode: str = "auto"  # models/conv.py MODES: the convolution formulation (config.perf.conv)

  def _heads(self, ch: int, upsample: bool) -> int:
    if self.num_head_channels != -1:
      if ch % self.num_head_channels:
        raise ValueError(f"{ch} attention channels are not divisible by num_head_channels {self.num_head_channels}")
      return ch // self.num_head_channels
    if upsample and self.num_heads_upsample != -1:
      return self.num_heads_upsample
    return self.num_heads

  @nn.compact
  def __call__(self, x, t, y=None, deterministic: bool = True):
    if (y is None) != (self.num_classes is None):
      raise ValueError(
        "ADMUNet: y (class labels) must be given iff num_classes is set "
        f"(num_classes={self.num_classes}, y given: {y is not None})"
      )
    dt = self.dtype
    attn_ds = {self.image_size // int(r) for r in self.attention_resolutions}
    emb = _embedding(self, x, t, y)

    res_cls = remat_block(ResBlock, self.remat, static_argnums=(3,))
    attn_cls = remat_block(AttentionBlock, self.remat)

    def res(h, out, name, **kw):
      return res_cls(out, self.dropout, self.use_scale_shift_norm, dtype=dt, conv_mode=self.conv_mode, name=name, **kw)(
        h, emb, deterministic
      )

    def attn(h, name, upsample=False):
      return attn_cls(
        self._heads(h.shape[-1], upsample), dt, self.attention_chunk, conv_mode=self.conv_mode, name=name
      )(h)

    hs, ds = _input_blocks(self, x, res, attn, attn_ds)

    h = res(hs[-1], hs[-1].shape[-1], "middle_block_0")
    h = attn(h, "middle_block_1")
    h = res(h, h.shape[-1], "middle_block_2")

    h = _output_blocks(self, h, hs, ds, res, attn, attn_ds)
    assert not hs

    h = nn.silu(GroupNorm(32, _GN_EPS, name="out_0")(h.astype(jnp.float32)))
    return Conv2d(self.out_channels, 3, padding=1, zero_init=True, conv_mode=self.conv_mode, name="out_2")(h)


# The steps of ``ADMUNet.__call__``: plain functions of the module, called inside its compact ``__call__``
# (so the layers they create are its children, under the official names); ``res(h, out, name, **kw)`` and
# ``attn(h, name, upsample=False)`` build and apply the next ResBlock / AttentionBlock.


def _embedding(m: ADMUNet, x, t, y):
  """The timestep embedding through ``time_embed``, plus the label embedding when ``num_classes`` is set."""
  mc = m.model_channels
  emb = time_features(lambda tt: adm_timestep_embedding(tt, mc), t, x.shape[0])
  emb = Dense(4 * mc, name="time_embed_0")(emb)
  emb = Dense(4 * mc, name="time_embed_2")(nn.silu(emb))
  if m.num_classes is not None:
    emb = emb + Embed(m.num_classes, 4 * mc, name="label_emb")(y)
  return emb


def _input_blocks(m: ADMUNet, x, res, attn, attn_ds):
  """``input_blocks``: (the skip activations in order, the downsample factor reached)."""
  dt, mc = m.dtype, m.model_channels
  ch = int(m.channel_mult[0] * mc)
  hs = [Conv2d(ch, 3, padding=1, dtype=dt, conv_mode=m.conv_mode, name="input_blocks_0_0")(x.astype(dt))]
  ds, i = 1, 1
  for level, mult in enumerate(m.channel_mult):
    for _ in range(m.num_res_blocks):
      h = res(hs[-1], int(mult * mc), f"input_blocks_{i}_0")
      if ds in attn_ds:
        h = attn(h, f"input_blocks_{i}_1")
      hs.append(h)
      i += 1
    if level != len(m.channel_mult) - 1:
      name = f"input_blocks_{i}_0"
      if m.resblock_updown:
        hs.append(res(hs[-1], hs[-1].shape[-1], name, down=True))
      else:
        hs.append(Downsample(m.conv_resample, dt, conv_mode=m.conv_mode, name=name)(hs[-1]))
      ds, i = ds * 2, i + 1
  return hs, ds


def _output_blocks(m: ADMUNet, h, hs, ds, res, attn, attn_ds):
  """``output_blocks``, popping the skip activations ``hs`` (all of them)."""
  dt, mc = m.dtype, m.model_channels
  i = 0
  for level, mult in reversed(list(enumerate(m.channel_mult))):
    for j in range(m.num_res_blocks + 1):
      h = res(jnp.concatenate([h, hs.pop()], axis=-1), int(mult * mc), f"output_blocks_{i}_0")
      pos = 1
      if ds in attn_ds:
        h = attn(h, f"output_blocks_{i}_1", upsample=True)
        pos = 2
      if level and j == m.num_res_blocks:
        name = f"output_blocks_{i}_{pos}"
        if m.resblock_updown:
          h = res(h, h.shape[-1], name, up=True)
        else:
          h = Upsample(m.conv_resample, dt, conv_mode=m.conv_mode, name=name)(h)
        ds //= 2
      i += 1
  return h


def adm_imagenet64() -> ml_collections.ConfigDict:
  """ImageNet-64 EDM policy (``configs/imagenet64/T10.yaml``): 295,899,267 params."""
  return ml_collections.ConfigDict(
    dict(
      image_size=64,
      in_channels=3,
      model_channels=192,
      out_channels=3,
      num_res_blocks=3,
      attention_resolutions=(32, 16, 8),
      dropout=0.0,
      channel_mult=(1, 2, 3, 4),
      conv_resample=True,
      num_classes=1000,
      num_heads=4,
      num_head_channels=64,
      num_heads_upsample=-1,
      use_scale_shift_norm=True,
      resblock_updown=True,
      dtype="float32",
      remat="none",
      attention_chunk=0,
    )
  )


def adm_lsun256() -> ml_collections.ConfigDict:
  """LSUN Bedroom-256 unconditional EDM policy (``configs/lsun/T4.yaml``): 526,304,771 params."""
  cfg = adm_imagenet64()
  cfg.update(
    dict(
      image_size=256,
      model_channels=256,
      num_res_blocks=2,
      channel_mult=(1, 1, 2, 2, 4, 4),
      num_classes=None,
      use_scale_shift_norm=False,
    )
  )
  return cfg
