"""DDPM UNet of the CIFAR-10 policy (official ``models/DxMI/unet_small.py::Model``), NHWC.

``DDPMUNet()(x, t)`` predicts epsilon; ``t`` is the *continuous* DDPM timestep
(B,) the VAR sampler feeds it (e.g. 616.73 ... 1.5e-4 for T=10).  Numerics that
differ from other UNets (reference §4.2, golden README A1):

* sinusoidal embedding ``[sin, cos]`` (sin first) with frequencies
  exp(-k ln(10000) / (half - 1)), computed in float32;
* GroupNorm(32, eps=1e-6);
* downsample = zero-pad right/bottom by one, then a 3x3 stride-2 VALID conv;
* single-head attention with C^-1/2 scaling;
* skips: conv_in output, every down block output (after its attention) and
  every downsample output; each up level has ``num_res_blocks + 1`` blocks on
  ``concat([h, skip])`` (h first).

Submodule names mirror the torch keys (``down_1_block_0/norm1`` <->
``down.1.block.0.norm1``) so that ``dxmi_jax.convert`` maps them by rule.

The same network in the Hugging Face diffusers ``UNet2DModel`` family
(``dxmi_jax.convert.from_diffusers`` / ``to_diffusers``) differs only in settings,
all fields of ``DDPMUNet`` whose defaults are the official choices above:

* ``level_channels``: explicit widths per level (``block_out_channels``), when they
  are not ``ch`` times integers;
* ``flip_sin_to_cos`` / ``freq_shift``: ``[cos, sin]`` order and frequencies
  exp(-k ln(10000) / (half - freq_shift));
* ``norm_groups`` / ``norm_eps``: every GroupNorm;
* ``downsample_padding``: 0 is the right/bottom pad above, 1 a symmetric pad of one;
* ``attn_head_channels``: channels per attention head (0: one head over all channels),
  scaling by head_channels^-1/2.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dxmi_jax.models import attention
from dxmi_jax.models.layers import (
  Conv2d,
  Dense,
  GroupNorm,
  avg_pool2x2,
  remat_block,
  swish,
  time_features,
  upsample_nearest2x,
)

Dtype = Any
_GN_EPS = 1e-6


def ddpm_timestep_embedding(t, dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1.0):
  """``get_timestep_embedding`` of unet_small: [sin(t f), cos(t f)], f_k = 10000^(-k/(half-1)).

  ``freq_shift`` s gives f_k = 10000^(-k/(half-s)) and ``flip_sin_to_cos`` the order
  [cos, sin] (diffusers' ``Timesteps``; its float32 operation order for s != 1).
  """
  half = dim // 2
  if freq_shift == 1:  # the official order of operations (golden parity)
    freqs = np.exp(np.arange(half, dtype=np.float32) * np.float32(-math.log(10000) / (half - 1)))
  else:
    k = np.arange(half, dtype=np.float32)
    freqs = np.exp((np.float32(-math.log(10000)) * k) / np.float32(half - freq_shift)).astype(np.float32)
  args = jnp.asarray(t, jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None]
  parts = [jnp.sin(args), jnp.cos(args)]
  emb = jnp.concatenate(parts[::-1] if flip_sin_to_cos else parts, axis=1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class ResnetBlock(nn.Module):
  out_ch: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  norm_groups: int = 32
  norm_eps: float = _GN_EPS
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x, temb, deterministic: bool = True):
    g, eps = self.norm_groups, self.norm_eps
    h = Conv2d(self.out_ch, 3, padding=1, dtype=self.dtype, conv_mode=self.conv_mode, name="conv1")(
      swish(GroupNorm(g, eps, name="norm1")(x))
    )
    h = h + Dense(self.out_ch, dtype=self.dtype, name="temb_proj")(swish(temb))[:, None, None, :]
    h = swish(GroupNorm(g, eps, name="norm2")(h))
    if self.dropout > 0:
      h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = Conv2d(self.out_ch, 3, padding=1, dtype=self.dtype, conv_mode=self.conv_mode, name="conv2")(h)
    if x.shape[-1] != self.out_ch:
      x = Conv2d(self.out_ch, 1, dtype=self.dtype, conv_mode=self.conv_mode, name="nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Spatial self-attention (tokens in row-major (H, W) order).

  One head over all C channels (``head_channels=0``, the official block) or C / head_channels
  heads, head n on channels [n d, (n+1) d) (diffusers' ``Attention`` layout).
  """

  dtype: Dtype = jnp.float32
  query_chunk: int = 0  # models/attention.py: query rows per chunk (memory); 0 = all at once
  norm_groups: int = 32
  norm_eps: float = _GN_EPS
  head_channels: int = 0
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    d = self.head_channels or c
    if c % d:
      raise ValueError(f"DDPMUNet: attn_head_channels={d} does not divide the {c} channels of an attention layer")
    nh = c // d
    h = GroupNorm(self.norm_groups, self.norm_eps, name="norm")(x)
    q, k, v = (
      Conv2d(c, 1, dtype=self.dtype, conv_mode=self.conv_mode, name=n)(h).reshape(b, hh * ww, c) for n in "qkv"
    )

    def attend(q):  # (B, s, C) queries -> (B, s, C)
      if nh == 1:  # the official single head, as it always was computed
        w = jnp.einsum("bic,bjc->bij", q, k) * (int(c) ** -0.5)
        w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(self.dtype)
        return jnp.einsum("bij,bjc->bic", w, v)
      qh, kh, vh = (a.reshape(a.shape[:2] + (nh, d)) for a in (q, k, v))
      w = jnp.einsum("binc,bjnc->bnij", qh, kh) * (int(d) ** -0.5)
      w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(self.dtype)
      return jnp.einsum("bnij,bjnc->binc", w, vh).reshape(q.shape)

    a = attention.over_query_chunks(attend, q, self.query_chunk).reshape(b, hh, ww, c)
    return x + Conv2d(c, 1, dtype=self.dtype, conv_mode=self.conv_mode, name="proj_out")(a)


class Downsample(nn.Module):
  with_conv: bool = True
  dtype: Dtype = jnp.float32
  padding: int = 0  # 0: zero-pad right/bottom by one (official); 1: torch's symmetric padding=1
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x):
    if not self.with_conv:
      return avg_pool2x2(x)
    if self.padding == 0:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # asymmetric: right and bottom only
    return Conv2d(
      x.shape[-1], 3, stride=2, padding=self.padding, dtype=self.dtype, conv_mode=self.conv_mode, name="conv"
    )(x)


class Upsample(nn.Module):
  with_conv: bool = True
  dtype: Dtype = jnp.float32
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x):
    x = upsample_nearest2x(x)
    if self.with_conv:
      x = Conv2d(x.shape[-1], 3, padding=1, dtype=self.dtype, conv_mode=self.conv_mode, name="conv")(x)
    return x


class DDPMUNet(nn.Module):
  """``unet_small.Model``; call ``(x, t, y=None, deterministic=True)``, x NHWC, t (B,).

  ``y`` is accepted for the common signature and must be None (unconditional).
  With ``dtype=bfloat16`` the torso (all blocks) runs in bfloat16; the timestep
  embedding MLP and the output head (norm_out, conv_out) stay float32, like the
  consistency-models fp16 recipe.  Parameters are always float32.

  The fields after ``attention_chunk`` generalise the official network to the
  diffusers ``UNet2DModel`` settings (module docstring); their defaults are the
  official network.
  """

  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resamp_with_conv: bool = True
  resolution: int = 32
  in_channels: int = 3
  out_ch: int = 3
  dtype: Dtype = jnp.float32
  remat: str = "none"  # layers.REMAT_POLICIES: "blocks" recomputes each block in the backward pass
  attention_chunk: int = 0  # attention over this many query rows at a time (models/attention.py); 0 = off
  level_channels: Sequence[int] = ()  # widths of the levels; () = ch * ch_mult (then ch_mult must be ())
  norm_groups: int = 32  # groups of every GroupNorm
  norm_eps: float = _GN_EPS
  downsample_padding: int = 0  # 0: pad right/bottom by one, VALID conv (official); 1: symmetric pad of one
  attn_head_channels: int = 0  # channels per attention head; 0: one head
  flip_sin_to_cos: bool = False  # time embedding [cos, sin] instead of [sin, cos]
  freq_shift: float = 1.0  # time embedding frequencies 10000^(-k / (half - freq_shift))
  conv_mode: str = "auto"  # models/conv.py MODES: the convolution formulation (config.perf.conv)

  def widths(self) -> Tuple[int, ...]:
    """The channels of each level."""
    if self.level_channels:
      if tuple(self.ch_mult):
        raise ValueError(
          f"DDPMUNet: give the level widths either as level_channels={tuple(self.level_channels)} or as "
          f"ch * ch_mult (ch_mult={tuple(self.ch_mult)}), not both: set ch_mult=()"
        )
      return tuple(int(c) for c in self.level_channels)
    if not tuple(self.ch_mult):
      raise ValueError("DDPMUNet: ch_mult and level_channels are both empty: no levels")
    return tuple(self.ch * m for m in self.ch_mult)

  @nn.compact
  def __call__(self, x, t, y=None, deterministic: bool = True):
    if y is not None:
      raise ValueError("DDPMUNet is unconditional: y must be None")
    if x.shape[1:] != (self.resolution, self.resolution, self.in_channels):
      raise ValueError(
        f"DDPMUNet expects NHWC input of shape (B, {self.resolution}, "
        f"{self.resolution}, {self.in_channels}), got {x.shape}"
      )
    if self.downsample_padding not in (0, 1):
      raise ValueError(f"DDPMUNet: downsample_padding must be 0 or 1, got {self.downsample_padding!r}")
    ch, dt, widths = self.ch, self.dtype, self.widths()
    nlev, groups, eps = len(widths), self.norm_groups, self.norm_eps
    temb = time_features(
      lambda tt: ddpm_timestep_embedding(tt, ch, self.flip_sin_to_cos, self.freq_shift), t, x.shape[0]
    )
    temb = Dense(4 * ch, name="temb_dense_0")(temb)
    temb = Dense(4 * ch, name="temb_dense_1")(swish(temb))

    res_cls = remat_block(ResnetBlock, self.remat, static_argnums=(3,))
    attn_cls = remat_block(AttnBlock, self.remat)

    def res(h, out, name):
      return res_cls(out, self.dropout, dt, groups, eps, conv_mode=self.conv_mode, name=name)(h, temb, deterministic)

    def attn(h, name):
      return attn_cls(
        dt, self.attention_chunk, groups, eps, self.attn_head_channels, conv_mode=self.conv_mode, name=name
      )(h)

    hs = [Conv2d(ch, 3, padding=1, dtype=dt, conv_mode=self.conv_mode, name="conv_in")(x)]
    res_now = self.resolution
    for lev in range(nlev):
      for j in range(self.num_res_blocks):
        h = res(hs[-1], widths[lev], f"down_{lev}_block_{j}")
        if res_now in self.attn_resolutions:
          h = attn(h, f"down_{lev}_attn_{j}")
        hs.append(h)
      if lev != nlev - 1:
        down = Downsample(
          self.resamp_with_conv, dt, self.downsample_padding, conv_mode=self.conv_mode, name=f"down_{lev}_downsample"
        )
        hs.append(down(hs[-1]))
        res_now //= 2

    h = res(hs[-1], hs[-1].shape[-1], "mid_block_1")
    h = attn(h, "mid_attn_1")
    h = res(h, h.shape[-1], "mid_block_2")

    for lev in reversed(range(nlev)):
      for j in range(self.num_res_blocks + 1):
        h = res(jnp.concatenate([h, hs.pop()], axis=-1), widths[lev], f"up_{lev}_block_{j}")
        if res_now in self.attn_resolutions:
          h = attn(h, f"up_{lev}_attn_{j}")
      if lev != 0:
        h = Upsample(self.resamp_with_conv, dt, conv_mode=self.conv_mode, name=f"up_{lev}_upsample")(h)
        res_now *= 2
    assert not hs

    h = swish(GroupNorm(groups, eps, name="norm_out")(h.astype(jnp.float32)))
    return Conv2d(self.out_ch, 3, padding=1, conv_mode=self.conv_mode, name="conv_out")(h)


def ddpm_cifar10() -> ml_collections.ConfigDict:
  """The CIFAR-10 policy network of ``configs/cifar10/T10.yaml`` (35,746,307 weights)."""
  return ml_collections.ConfigDict(
    dict(
      ch=128,
      ch_mult=(1, 2, 2, 2),
      num_res_blocks=2,
      attn_resolutions=(16,),
      dropout=0.1,
      resamp_with_conv=True,
      resolution=32,
      in_channels=3,
      out_ch=3,
      dtype="float32",
      remat="none",
      attention_chunk=0,
      level_channels=(),
      norm_groups=32,
      norm_eps=_GN_EPS,
      downsample_padding=0,
      attn_head_channels=0,
      flip_sin_to_cos=False,
      freq_shift=1.0,
    )
  )
