"""The 2D convolution of every image network, with a gradient XLA:CPU runs fast inside loops.

Why this exists: XLA's CPU backend only runs a convolution through its fast (Eigen)
kernel when the convolution is in the canonical form input NHWC, kernel HWIO, output
NHWC.  Autodiff produces other forms (the kernel gradient contracts over the batch;
tiny spatial sizes get their operands swapped by the algebraic simplifier), and XLA:CPU
rewrites them into the canonical form only in the entry computation of a program, not
in the body of a while loop (a ``lax.scan``).  Inside a scan those convolutions run
through the generic loop emitter: on the digits networks a value gradient inside the TD
scan was about 15x slower than the same gradient unrolled (a single 3x3 conv gradient,
B=32, 8x8x32: 55 ms vs 5 ms of CPU time per step).

``conv2d`` with mode ``"loop_safe"`` keeps the forward convolution where it is already
canonical (bitwise the same result as before) and supplies its own gradient
(``jax.custom_vjp``) built only from canonical convolutions and matrix products:

* input gradient: the canonical convolution of the output gradient with the flipped,
  transposed kernel (stride 1), or the transpose of the patch matrix product otherwise;
* kernel gradient: for stride 1, one canonical convolution of the input (channels as
  batch) with the output gradient as its kernel (``_kernel_grad_as_conv``); otherwise one
  matrix product of the im2col patches with the output gradient, contracting over batch
  and positions.

Where the forward convolution would not stay canonical (an input smaller than the kernel,
as in the 2x2 and 1x1 stages of the IGEBM value net), the forward is the im2col matrix
product itself (the same sum in another order: float32 rounding differences only).

Modes: ``"xla"`` (plain ``lax.conv_general_dilated`` and its autodiff; the right choice
on GPU/TPU, where cuDNN-style kernels handle every form), ``"loop_safe"``, and ``"auto"``
(the default): ``loop_safe`` when the default backend is the CPU, else ``xla``.  The
mode is an argument of ``conv2d``, carried by the networks: every convolution layer and
network has a ``conv_mode`` field (``layers.Conv2d``, ``ddgan.Conv``, the UNets, IGEBM),
which the experiment sets from ``config.perf.conv``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

MODES = ("auto", "xla", "loop_safe")


def resolved_mode(mode: str = "auto") -> str:
  """The formulation ``mode`` stands for on the default backend ("auto": by backend)."""
  if mode not in MODES:
    raise ValueError(f"conv mode must be one of {MODES}, got {mode!r}")
  if mode != "auto":
    return mode
  return "loop_safe" if jax.default_backend() == "cpu" else "xla"


def conv2d(x, kernel, stride: int, padding: int, mode: str = "auto"):
  """torch.nn.Conv2d's convolution (no bias) on NHWC x, HWIO kernel, symmetric int padding."""
  if resolved_mode(mode) == "xla":
    return _xla_conv(x, kernel, stride, padding)
  return _loop_safe_conv(x, kernel, stride, padding)


def _xla_conv(x, kernel, stride, padding):
  p = padding
  return jax.lax.conv_general_dilated(
    x, kernel, (stride, stride), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def _canonical_ok(x, k: int) -> bool:
  """XLA keeps a NHWC/HWIO convolution canonical unless the kernel exceeds the input."""
  return x.shape[1] >= k and x.shape[2] >= k


def _patches(x, k: int, stride: int, padding: int):
  """im2col: (B, Ho, Wo, k*k*C), taps in kernel order (kh, kw, c) to match HWIO.reshape."""
  p = padding
  if p:
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  b, h, w, c = x.shape
  ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
  if k == 1 and stride == 1:
    return x
  taps = [
    jax.lax.slice(x, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c), (1, stride, stride, 1))
    for i in range(k)
    for j in range(k)
  ]
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _kernel_grad_as_conv(x, g, padding: int):
  """The kernel gradient of a stride-1 convolution as one canonical convolution.

  gk[i, j, c, o] = sum_{b,h,w} x_pad[b, h+i, w+j, c] g[b, h, w, o] is a convolution of x
  with channels as its batch (C, H, W, B) by g as an (Ho, Wo, B, O) kernel: NHWC/HWIO
  again, so Eigen's convolution runs it inside loops too, packing the patches itself.
  Only the two small operands are transposed, where the im2col product materialises and
  transposes a (k*k*C, B*Ho*Wo) patch matrix (1.1-1.8x slower on the digits shapes).
  """
  lhs = jnp.transpose(x, (3, 1, 2, 0))
  rhs = jnp.transpose(g, (1, 2, 0, 3)).astype(x.dtype)
  p = padding
  out = jax.lax.conv_general_dilated(lhs, rhs, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.transpose(out, (1, 2, 0, 3))


def _matmul_conv(x, kernel, stride, padding):
  k, c, o = kernel.shape[0], kernel.shape[2], kernel.shape[3]
  return jnp.dot(_patches(x, k, stride, padding), kernel.reshape(k * k * c, o))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _loop_safe_conv(x, kernel, stride, padding):
  if _canonical_ok(x, kernel.shape[0]):
    return _xla_conv(x, kernel, stride, padding)
  return _matmul_conv(x, kernel, stride, padding)


def _fwd(x, kernel, stride, padding):
  return _loop_safe_conv(x, kernel, stride, padding), (x, kernel)


def _bwd(stride, padding, res, g):
  x, kernel = res
  k, c, o = kernel.shape[0], kernel.shape[2], kernel.shape[3]
  if stride == 1 and k > 1:
    gk = _kernel_grad_as_conv(x, g, padding)
  else:
    patches = _patches(x, k, stride, padding)
    gk = jax.lax.dot_general(patches, g, (((0, 1, 2), (0, 1, 2)), ((), ())))
  gk = gk.reshape(k, k, c, o).astype(kernel.dtype)
  if k == 1 and stride == 1 and padding == 0:
    gx = jnp.dot(g, kernel[0, 0].T)
  elif stride == 1 and k - 1 - padding >= 0 and _canonical_ok(g, k):
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    gx = _xla_conv(g, flipped.astype(g.dtype), 1, k - 1 - padding)
  else:
    _, vjp = jax.vjp(lambda xx: _matmul_conv(xx, kernel, stride, padding), x)
    (gx,) = vjp(g)
  return gx.astype(x.dtype), gk


_loop_safe_conv.defvjp(_fwd, _bwd)
