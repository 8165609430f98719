"""DDGAN's NCSN++ generator with adaptive group norm and a latent z (Xiao et al., ICLR 2022).

The generator x̂_0 = G(x_t, t, z) of a Denoising Diffusion GAN: the score-SDE NCSN++
UNet (BigGAN resblocks with FIR up/down-sampling, a residual input pyramid, one
attention level) whose group norms are *adaptive*: each AdaGN takes its scale and
shift from a style vector w = MLP(PixelNorm(z)).  The time input is the integer
diffusion index (0 .. num_timesteps-1) through a sinusoidal embedding; the output
is tanh-squashed.  This is what DxMI's CIFAR-10 T=4 row fine-tunes (DDGAN's
``ddgan_cifar10_exp1/netG_1200.pth``), so the layout follows DDGAN's
``score_sde/models/ncsnpp_generator_adagn.NCSNpp`` module for module:

* Flax submodules are named like the torch module paths with ``.`` -> ``_`` on the
  list indices only: ``all_modules_7/GroupNorm_0/style`` is
  ``all_modules.7.GroupNorm_0.style``, ``z_transform_3`` is ``z_transform.3``;
  ``dxmi_jax.convert`` maps them (kernels transposed, ``NIN`` weights ``W``/``b``
  kept as they are: they are already (in, out)).
* The flat ``all_modules`` list is numbered in the order DDGAN builds it, which is
  also the order its forward consumes it, so a running counter names every module.

Supported settings: DDGAN's CIFAR-10/LSUN/CelebA ones (``resblock_type="biggan"``,
``progressive="none"``, ``progressive_input`` "residual" or "none", positional
time embedding, ``conditional=True``, FIR on or off).  Others raise ValueError.
The network is called as ``apply(v, x_nhwc, t, z=z)``; ``y`` is accepted and
ignored (unconditional).  ``z`` may be omitted only while initialising (shape
inference), where a zero latent stands in.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dxmi_jax.models import conv
from dxmi_jax.models.layers import GroupNorm, canonical_dtype, swish

Dtype = Any

# ----------------------------------------------------------------------------- initialisers
# DDGAN's DDPM-style init: U(-a, a) with a = sqrt(3 scale / fan_avg); scale 0 means 1e-10.


def _ddpm_init(scale: float = 1.0):
  return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


# ``dense_layer.dense`` asks kaiming_uniform_ for mode "fan_avg", which torch's fan helper
# answers with fan_out: U(-a, a), a = sqrt(3 / fan_out).
_dense_init = nn.initializers.variance_scaling(1.0, "fan_out", "uniform")


def _ones_then_zeros(half: int):
  """AdaGN style bias: gamma part 1, beta part 0."""

  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.concatenate([jnp.ones((half,), dtype), jnp.zeros((shape[0] - half,), dtype)])

  return init


# ----------------------------------------------------------------------------- FIR resampling
# StyleGAN2's upfirdn2d (upsample by zero insertion, pad, FIR filter, decimate) with DDGAN's
# separable FIR kernels, written as one 1-D pass per spatial axis of shifted, weighted slices.
# That is elementwise work only: no grouped or dilated convolution, whose forms XLA:CPU runs
# slowly inside the rollout scan (see models/conv.py).


def fir_taps(k: Sequence[float]) -> np.ndarray:
  """The 1-D taps of the separable FIR filter k (x) k, normalised so the 2-D kernel sums to 1."""
  k = np.asarray(k, np.float64)
  if k.ndim != 1 or not k.size:
    raise ValueError(f"fir_kernel must be a non-empty 1-D sequence (a separable filter), got {k!r}")
  return k / np.sum(k)


def _upfirdn_axis(x, taps: np.ndarray, axis: int, up: int, down: int, pad: Tuple[int, int]):
  if up > 1:  # each sample followed by up-1 zeros
    z = jnp.zeros(x.shape + (up - 1,), x.dtype)
    x = jnp.concatenate([x[..., None], z], axis=-1)
    x = jnp.moveaxis(x, -1, axis + 1)
    shape = list(x.shape)
    x = x.reshape(shape[:axis] + [shape[axis] * up] + shape[axis + 2 :])
  widths = [(0, 0)] * x.ndim
  widths[axis] = pad
  x = jnp.pad(x, widths)
  n = x.shape[axis] - len(taps) + 1
  flipped = taps[::-1]  # a true convolution with the kernel
  out = sum(float(w) * jax.lax.slice_in_dim(x, m, m + n, axis=axis) for m, w in enumerate(flipped) if w != 0)
  return jax.lax.slice_in_dim(out, 0, n, stride=down, axis=axis)


def upfirdn2d(x, taps: np.ndarray, up: int = 1, down: int = 1, pad: Tuple[int, int] = (0, 0), gain: float = 1.0):
  """NHWC upfirdn2d with the separable kernel outer(taps, taps) * gain, the same pad on H and W."""
  g = np.sqrt(gain)
  x = _upfirdn_axis(x, taps * g, 1, up, down, pad)
  return _upfirdn_axis(x, taps * g, 2, up, down, pad)


def upsample_2d(x, k, factor: int = 2):
  taps = fir_taps(k)
  p = len(taps) - factor
  return upfirdn2d(x, taps, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2), gain=factor**2)


def downsample_2d(x, k, factor: int = 2):
  taps = fir_taps(k)
  p = len(taps) - factor
  return upfirdn2d(x, taps, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x, factor: int = 2):
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x, factor: int = 2):
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean((2, 4))


# ----------------------------------------------------------------------------- layers
class Conv(nn.Module):
  """torch Conv2d (params ``kernel`` HWIO, ``bias``) with DDGAN's init, optional FIR-fused down.

  ``fir_down``: StyleGAN2's conv_downsample_2d (FIR blur with pad, then a stride-2
  VALID conv), used by the residual input pyramid.  Otherwise torch's symmetric
  ``padding`` (default k // 2) and ``stride``.
  """

  features: int
  kernel_size: int = 3
  init_scale: float = 1.0
  stride: int = 1
  padding: Optional[int] = None
  fir_down: bool = False
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", _ddpm_init(self.init_scale), (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    if self.fir_down:
      taps = fir_taps(self.fir_kernel)
      p = (len(taps) - 2) + (k - 1)
      x = upfirdn2d(x, taps, pad=((p + 1) // 2, p // 2))
      stride, padding = 2, 0
    else:
      stride, padding = self.stride, k // 2 if self.padding is None else self.padding
    y = conv.conv2d(x, kernel.astype(self.dtype), stride, padding, self.conv_mode)
    return y + bias.astype(self.dtype)


class Linear(nn.Module):
  """torch Linear (params ``kernel`` (in, out), ``bias``)."""

  features: int
  kernel_init: Any = _dense_init
  bias_init: Any = nn.initializers.zeros
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class NIN(nn.Module):
  """Per-pixel linear map x @ W + b; DDGAN stores W as (in, out) under the names ``W``/``b``."""

  features: int
  init_scale: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param("W", _ddpm_init(self.init_scale), (x.shape[-1], self.features), jnp.float32)
    b = self.param("b", nn.initializers.zeros, (self.features,), jnp.float32)
    return jnp.einsum("...c,cd->...d", x.astype(self.dtype), w.astype(self.dtype)) + b.astype(self.dtype)


class PyramidDownsample(nn.Module):
  """DDGAN's layerspp.Downsample(with_conv=True) of the input pyramid.

  fir: the FIR-fused stride-2 conv ``Conv2d_0``; otherwise ``Conv_0``, a stride-2 VALID
  conv after one row/column of zeros at the bottom/right.
  """

  features: int
  fir: bool = True
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  dtype: Dtype = jnp.float32
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x):
    if self.fir:
      return Conv(
        self.features,
        3,
        fir_down=True,
        fir_kernel=self.fir_kernel,
        dtype=self.dtype,
        conv_mode=self.conv_mode,
        name="Conv2d_0",
      )(x)
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return Conv(self.features, 3, stride=2, padding=0, dtype=self.dtype, conv_mode=self.conv_mode, name="Conv_0")(x)


def _groups(channels: int) -> int:
  return min(channels // 4, 32)


def _group_norm_plain(x, groups: int, eps: float):
  """GroupNorm without affine parameters, statistics in float32 (biased variance)."""
  b, h, w, c = x.shape
  g = x.astype(jnp.float32).reshape(b, h, w, groups, c // groups)
  mean = g.mean((1, 2, 4), keepdims=True)
  var = jnp.square(g - mean).mean((1, 2, 4), keepdims=True)
  return ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape).astype(x.dtype)


class AdaptiveGroupNorm(nn.Module):
  """gamma(w) * GroupNorm(x) + beta(w), with [gamma, beta] = style(w) (gamma's bias starts at 1)."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, style):
    c = x.shape[-1]
    s = Linear(2 * c, bias_init=_ones_then_zeros(c), dtype=self.dtype, name="style")(style)
    gamma, beta = s[:, None, None, :c], s[:, None, None, c:]
    return gamma * _group_norm_plain(x, _groups(c), 1e-6) + beta


class ResnetBlockBigGAN(nn.Module):
  """DDGAN's ResnetBlockBigGANpp_Adagn: AdaGN-act-(resample)-conv-(+temb)-AdaGN-act-dropout-conv."""

  out_ch: Optional[int] = None
  up: bool = False
  down: bool = False
  fir: bool = True
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  dropout: float = 0.0
  skip_rescale: bool = True
  dtype: Dtype = jnp.float32
  conv_mode: str = "auto"

  @nn.compact
  def __call__(self, x, temb, zemb, deterministic: bool = True):
    in_ch = x.shape[-1]
    out_ch = self.out_ch or in_ch
    h = swish(AdaptiveGroupNorm(self.dtype, name="GroupNorm_0")(x, zemb))
    if self.up or self.down:
      if self.fir:
        resample = (
          (lambda a: upsample_2d(a, self.fir_kernel)) if self.up else (lambda a: downsample_2d(a, self.fir_kernel))
        )
      else:
        resample = naive_upsample_2d if self.up else naive_downsample_2d
      h, x = resample(h), resample(x)
    h = Conv(out_ch, 3, dtype=self.dtype, conv_mode=self.conv_mode, name="Conv_0")(h)
    h = h + Linear(out_ch, kernel_init=_ddpm_init(), dtype=self.dtype, name="Dense_0")(swish(temb))[:, None, None, :]
    h = swish(AdaptiveGroupNorm(self.dtype, name="GroupNorm_1")(h, zemb))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = Conv(out_ch, 3, init_scale=0.0, dtype=self.dtype, conv_mode=self.conv_mode, name="Conv_1")(h)
    if in_ch != out_ch or self.up or self.down:
      x = Conv(out_ch, 1, dtype=self.dtype, conv_mode=self.conv_mode, name="Conv_2")(x)
    return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(nn.Module):
  """DDGAN's AttnBlockpp: single-head self-attention over all H*W positions."""

  skip_rescale: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    h = GroupNorm(_groups(c), 1e-6, name="GroupNorm_0")(x)
    q = NIN(c, dtype=self.dtype, name="NIN_0")(h)
    k = NIN(c, dtype=self.dtype, name="NIN_1")(h)
    v = NIN(c, dtype=self.dtype, name="NIN_2")(h)
    w = jnp.einsum("bhwc,bijc->bhwij", q, k) * (int(c) ** (-0.5))
    w = jax.nn.softmax(w.reshape(b, hh, ww, hh * ww).astype(jnp.float32), axis=-1)
    w = w.reshape(b, hh, ww, hh, ww).astype(self.dtype)
    h = jnp.einsum("bhwij,bijc->bhwc", w, v)
    h = NIN(c, init_scale=0.0, dtype=self.dtype, name="NIN_3")(h)
    return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


def timestep_embedding(t, dim: int, max_positions: int = 10000):
  """DDGAN's (score-SDE's) sinusoidal embedding [sin, cos] of float(t), (B,) -> (B, dim)."""
  half = dim // 2
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(max_positions) / (half - 1)))
  arg = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


# ----------------------------------------------------------------------------- the generator
class DDGANGenerator(nn.Module):
  """NCSN++ with AdaGN: x̂_0 = G(x_t, t, z), NHWC in and out (fields = DDGAN's argument names)."""

  image_size: int = 32
  num_channels: int = 3
  num_channels_dae: int = 128
  ch_mult: Tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Tuple[int, ...] = (16,)
  dropout: float = 0.0
  resamp_with_conv: bool = True
  conditional: bool = True
  fir: bool = True
  fir_kernel: Tuple[int, ...] = (1, 3, 3, 1)
  skip_rescale: bool = True
  resblock_type: str = "biggan"
  progressive: str = "none"
  progressive_input: str = "residual"
  progressive_combine: str = "sum"
  embedding_type: str = "positional"
  not_use_tanh: bool = False
  centered: bool = True
  nz: int = 100
  z_emb_dim: int = 256
  n_mlp: int = 4
  dtype: Dtype = jnp.float32
  conv_mode: str = "auto"  # models/conv.py MODES: the convolution formulation (config.perf.conv)

  def _check(self):
    bad = []
    if self.resblock_type.lower() != "biggan":
      bad.append(f"resblock_type={self.resblock_type!r} (supported: 'biggan')")
    if self.progressive.lower() != "none":
      bad.append(f"progressive={self.progressive!r} (supported: 'none')")
    if self.progressive_input.lower() not in ("none", "residual"):
      bad.append(f"progressive_input={self.progressive_input!r} (supported: 'none', 'residual')")
    if self.progressive_input.lower() == "residual" and not self.resamp_with_conv:
      bad.append("progressive_input='residual' needs resamp_with_conv=True")
    if self.embedding_type.lower() != "positional":
      bad.append(f"embedding_type={self.embedding_type!r} (supported: 'positional')")
    if not self.conditional:
      bad.append("conditional=False (supported: True)")
    if bad:
      raise ValueError("DDGANGenerator: unsupported setting(s): " + "; ".join(bad))

  @nn.compact
  def __call__(self, x, t, y=None, *, z=None, deterministic: bool = True):
    del y  # unconditional
    self._check()
    dtype = canonical_dtype(self.dtype)
    if z is None:
      if not self.is_initializing():
        raise ValueError("DDGANGenerator needs the latent z (B, nz): call apply(v, x, t, z=z)")
      z = jnp.zeros((x.shape[0], self.nz), jnp.float32)
    counter = iter(range(10**6))
    name = lambda: f"all_modules_{next(counter)}"  # torch's all_modules index
    res_block = lambda **kw: ResnetBlockBigGAN(
      fir=self.fir,
      fir_kernel=tuple(self.fir_kernel),
      dropout=self.dropout,
      skip_rescale=self.skip_rescale,
      dtype=dtype,
      conv_mode=self.conv_mode,
      name=name(),
      **kw,
    )
    w = _style(self, z, dtype)
    temb = _time_embedding(self, t, dtype, name)
    hs = _encoder(self, x, temb, w, deterministic, dtype, name, res_block)

    h = hs[-1]
    h = res_block()(h, temb, w, deterministic)
    h = AttnBlock(self.skip_rescale, dtype, name=name())(h)
    h = res_block()(h, temb, w, deterministic)

    h = _decoder(self, h, hs, temb, w, deterministic, dtype, name, res_block)
    assert not hs

    h = swish(GroupNorm(_groups(h.shape[-1]), 1e-6, name=name())(h))
    h = Conv(self.num_channels, 3, init_scale=0.0, dtype=dtype, conv_mode=self.conv_mode, name=name())(h)
    h = h.astype(jnp.float32)
    return h if self.not_use_tanh else jnp.tanh(h)


# The steps of ``DDGANGenerator.__call__``: plain functions of the module, called inside its compact
# ``__call__`` (so the layers they create are its children, under the same names); ``name`` numbers the
# layers in torch's ``all_modules`` order and ``res_block`` builds the next ResnetBlockBigGAN.


def _style(m: DDGANGenerator, z, dtype):
  """Style w = MLP(PixelNorm(z)): z_transform.{1,3,..} are the Linear layers."""
  zf = z.astype(jnp.float32)
  w = zf / jnp.sqrt(jnp.mean(jnp.square(zf), axis=1, keepdims=True) + 1e-8)
  for i in range(m.n_mlp + 1):
    w = swish(Linear(m.z_emb_dim, dtype=dtype, name=f"z_transform_{2 * i + 1}")(w))
  return w


def _time_embedding(m: DDGANGenerator, t, dtype, name):
  """The sinusoidal embedding of t through two Linear layers (4 * num_channels_dae wide)."""
  nf = m.num_channels_dae
  temb = timestep_embedding(t, nf)
  temb = Linear(nf * 4, kernel_init=_ddpm_init(), dtype=dtype, name=name())(temb)
  return Linear(nf * 4, kernel_init=_ddpm_init(), dtype=dtype, name=name())(swish(temb))


def _encoder(m: DDGANGenerator, x, temb, w, deterministic, dtype, name, res_block):
  """The input conv and the down path (with the residual input pyramid): the skip activations, in order."""
  nf = m.num_channels_dae
  x = x.astype(dtype)
  if not m.centered:
    x = 2 * x - 1.0
  pyramid = x if m.progressive_input.lower() == "residual" else None
  hs = [Conv(nf, 3, dtype=dtype, conv_mode=m.conv_mode, name=name())(x)]
  levels = len(m.ch_mult)
  for lvl in range(levels):
    for _ in range(m.num_res_blocks):
      h = res_block(out_ch=nf * m.ch_mult[lvl])(hs[-1], temb, w, deterministic)
      if h.shape[2] in m.attn_resolutions:
        h = AttnBlock(m.skip_rescale, dtype, name=name())(h)
      hs.append(h)
    if lvl != levels - 1:
      h = res_block(down=True)(hs[-1], temb, w, deterministic)
      if pyramid is not None:
        pyramid = PyramidDownsample(h.shape[-1], m.fir, tuple(m.fir_kernel), dtype, conv_mode=m.conv_mode, name=name())(
          pyramid
        )
        pyramid = (pyramid + h) / np.sqrt(2.0) if m.skip_rescale else pyramid + h
        h = pyramid
      hs.append(h)
  return hs


def _decoder(m: DDGANGenerator, h, hs, temb, w, deterministic, dtype, name, res_block):
  """The up path, popping the skip activations ``hs`` (all of them)."""
  nf = m.num_channels_dae
  for lvl in reversed(range(len(m.ch_mult))):
    for _ in range(m.num_res_blocks + 1):
      h = res_block(out_ch=nf * m.ch_mult[lvl])(jnp.concatenate([h, hs.pop()], -1), temb, w, deterministic)
    if h.shape[2] in m.attn_resolutions:
      h = AttnBlock(m.skip_rescale, dtype, name=name())(h)
    if lvl != 0:
      h = res_block(up=True)(h, temb, w, deterministic)
  return h


def ddgan_cifar10() -> ml_collections.ConfigDict:
  """DDGAN's CIFAR-10 exp1 generator (README command): 48,432,515 parameters, 384 tensors."""
  return ml_collections.ConfigDict(
    dict(
      image_size=32,
      num_channels=3,
      num_channels_dae=128,
      ch_mult=(1, 2, 2, 2),
      num_res_blocks=2,
      attn_resolutions=(16,),
      dropout=0.0,
      resamp_with_conv=True,
      conditional=True,
      fir=True,
      fir_kernel=(1, 3, 3, 1),
      skip_rescale=True,
      resblock_type="biggan",
      progressive="none",
      progressive_input="residual",
      progressive_combine="sum",
      embedding_type="positional",
      not_use_tanh=False,
      centered=True,
      nz=100,
      z_emb_dim=256,
      n_mlp=4,
      dtype="float32",
    )
  )


def example_inputs(cfg, batch: int):
  """(x, t, y) placeholders for the registry: NHWC zeros, integer-valued t, no labels."""
  size, chans = cfg.image_size, cfg.num_channels
  return jnp.zeros((batch, size, size, chans), jnp.float32), jnp.zeros((batch,), jnp.float32), None
