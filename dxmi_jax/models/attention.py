"""Self-attention over query chunks: the same attention with a fraction of its memory.

Attention over S tokens builds a (batch, heads, S, S) float32 score matrix, and the
gradient keeps it (and the softmax) alive until the backward pass.  In the ADM UNet of
ImageNet-64 the 32x32 stages have S = 1024: at 16 rows, 4 heads, one such matrix is
268 MB, several per block, and they are about half of the policy gradient's temporary
memory (``benchmarks/scaling.py --only=policy_grad``).

``over_query_chunks(attend, q, chunk)`` computes ``attend(q)`` for ``chunk`` query rows at
a time: a ``lax.map`` over S / chunk query blocks whose body is ``jax.checkpoint``-ed.
Every query row's softmax is over all keys, exactly as before, so the result is the same
attention (up to float32 summation order inside the products).  Only one block's
(batch, heads, chunk, S) scores exist at a time, in the forward pass and in the backward
pass, which recomputes them inside its own loop body (the residuals of a checkpointed
loop body are its inputs, so no scheduler can move the recomputation out and undo the
saving, which is what happens to block-level ``remat`` on XLA:CPU).  The cost is one
more score product per block in the backward pass.

``chunk = 0`` (the default of every network), or ``chunk >= S``, is the plain call.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def check_chunk(chunk: int, tokens: int, where: str = "attention_chunk") -> None:
  """One clear error for a chunk size that does not split the token axis."""
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
    raise ValueError(f"{where}: expected an integer >= 0 (query rows per chunk; 0 = off), got {chunk!r}")
  if 0 < chunk < tokens and tokens % chunk:
    raise ValueError(
      f"{where}={chunk} does not divide the {tokens} tokens of an attention layer; "
      "use a divisor of every attended resolution's H*W (e.g. a power of two), or 0"
    )


def over_query_chunks(attend: Callable, q, chunk: int):
  """``attend(q)`` computed ``chunk`` rows of axis 1 of ``q`` at a time.

  ``attend`` maps queries (B, s, ...) to outputs (B, s, ...) for any s, closing over the
  keys and values; ``q`` is (B, S, ...).
  """
  b, s = q.shape[:2]
  check_chunk(chunk, s)
  if chunk == 0 or chunk >= s:
    return attend(q)
  n = s // chunk
  blocks = jnp.moveaxis(q.reshape(b, n, chunk, *q.shape[2:]), 1, 0)  # (n, B, chunk, ...)
  out = jax.lax.map(jax.checkpoint(attend), blocks)  # (n, B, chunk, ...)
  return jnp.moveaxis(out, 0, 1).reshape(b, s, *out.shape[3:])
