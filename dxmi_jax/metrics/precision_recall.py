"""Improved precision and recall (Kynkäänniemi et al. 2019), as OpenAI's evaluator runs it.

Reference §7.2:

* distances are **squared** Euclidean, ``|u|^2 - 2 u.v + |v|^2`` floored at 0;
* the radius of feature i is the entry at 0-based position k (k = 3) of its
  sorted squared distances to its own set *including itself* (position 0 is
  the self-distance), i.e. the distance to the k-th nearest other point;
* precision = fraction of sample features inside at least one reference ball;
  recall = fraction of reference features inside at least one sample ball
  (``d <= radius``);
* the reference set comes first: ``precision_recall(ref, samples)``.

Everything is blockwise (default 10,000 rows x 10,000 columns), so memory stays
bounded.  For the radii, each column block contributes its k+1 smallest
entries per row and the (k+1)-th smallest of those candidates is the exact
order statistic of the full row.

Precision: OpenAI computes the distance blocks in float16 on the GPU and falls
back to float32 for a block with non-finite entries.  ``distance_dtype=
"float32"`` (default) is the more accurate computation; ``"float16"``
reproduces the fp16-with-fallback scheme, which moves borderline points and so
can change the counts slightly.
"""

from __future__ import annotations

import functools
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax.metrics import features as features_lib

DEFAULT_K = 3
DEFAULT_BLOCK = 10_000


def _sq_dists(u, v):
  nu = jnp.sum(u * u, axis=1)[:, None]
  nv = jnp.sum(v * v, axis=1)[None, :]
  return jnp.maximum(nu - 2 * (u @ v.T) + nv, 0)


def _dists(u, v, dtype: str):
  """Squared distances as float32; fp16 mode falls back to fp32 if anything overflows."""
  d32 = lambda: _sq_dists(u.astype(jnp.float32), v.astype(jnp.float32))
  if dtype == "float32":
    return d32()
  d16 = _sq_dists(u.astype(jnp.float16), v.astype(jnp.float16))
  return jax.lax.cond(jnp.all(jnp.isfinite(d16)), lambda: d16.astype(jnp.float32), d32)


@functools.partial(jax.jit, static_argnames=("m", "dtype"))
def _smallest(u, v, n_valid_v, m: int, dtype: str):
  """Per row of u: the m smallest squared distances to the first n_valid_v rows of v."""
  with jax.default_matmul_precision("highest"):
    d = _dists(u, v, dtype)
  d = jnp.where(jnp.arange(v.shape[0])[None, :] < n_valid_v, d, jnp.inf)
  return -jax.lax.top_k(-d, m)[0]


@functools.partial(jax.jit, static_argnames=("dtype",))
def _inside(u, ru, n_valid_u, v, rv, n_valid_v, dtype: str):
  """(u_i inside some ball of v, v_j inside some ball of u), padding rows excluded."""
  with jax.default_matmul_precision("highest"):
    d = _dists(u, v, dtype)
  u_ok = jnp.arange(u.shape[0]) < n_valid_u
  v_ok = jnp.arange(v.shape[0]) < n_valid_v
  u_in = jnp.any((d <= rv[None, :]) & v_ok[None, :], axis=1)
  v_in = jnp.any((d <= ru[:, None]) & u_ok[:, None], axis=0)
  return u_in, v_in


def _blocks(x: np.ndarray, size: int):
  """Yields (start, zero-padded block of exactly `size` rows, valid rows): one compile per shape."""
  for s in range(0, x.shape[0], size):
    b = x[s : s + size]
    n = b.shape[0]
    if n < size:
      b = np.concatenate([b, np.zeros((size - n,) + b.shape[1:], b.dtype)])
    yield s, b, n


def _check(features: Any, name: str, k: int) -> np.ndarray:
  if k < 1:
    raise features_lib.EvaluationInputError(f"k must be >= 1, got {k}")
  x = np.asarray(features, dtype=np.float32)
  if x.ndim != 2:
    raise features_lib.EvaluationInputError(f"{name}: features must be (N, D), got {x.shape}")
  if x.shape[0] <= k:
    raise features_lib.EvaluationInputError(
      f"{name}: precision/recall with k={k} needs at least {k + 1} features, got {x.shape[0]}"
    )
  if not np.all(np.isfinite(x)):
    raise features_lib.NonFiniteFeaturesError(f"{name}: features contain NaN or inf")
  return x


def manifold_radii(
  features: Any, k: int = DEFAULT_K, block_size: int = DEFAULT_BLOCK, distance_dtype: str = "float32"
) -> np.ndarray:
  """Squared k-NN radius of every row (self-distance counted at position 0)."""
  if distance_dtype not in ("float32", "float16"):
    raise ValueError(f"distance_dtype must be 'float32' or 'float16', got {distance_dtype!r}")
  if block_size <= k:
    raise ValueError(f"block_size must exceed k={k}, got {block_size}")
  x = _check(features, "features", k)
  n = x.shape[0]
  bs = min(block_size, n)
  radii = np.empty(n, np.float32)
  col_blocks = [(jnp.asarray(b), nv) for _, b, nv in _blocks(x, bs)]
  for r0, rows, nr in _blocks(x, bs):
    rows = jnp.asarray(rows)
    cands = np.concatenate(
      [np.asarray(_smallest(rows, cols, nv, k + 1, distance_dtype)) for cols, nv in col_blocks], axis=1
    )
    radii[r0 : r0 + nr] = np.sort(cands[:nr], axis=1)[:, k]
  return radii


def precision_recall(
  ref_features: Any,
  sample_features: Any,
  k: int = DEFAULT_K,
  block_size: int = DEFAULT_BLOCK,
  distance_dtype: str = "float32",
) -> Dict[str, float]:
  """Improved precision and recall; **reference first**, like OpenAI's ``main(ref, sample)``."""
  ref = _check(ref_features, "reference features", k)
  smp = _check(sample_features, "sample features", k)
  if ref.shape[1] != smp.shape[1]:
    raise features_lib.EvaluationInputError(
      f"reference features have dimension {ref.shape[1]} but samples {smp.shape[1]}"
    )
  ref_r = manifold_radii(ref, k, block_size, distance_dtype)
  smp_r = manifold_radii(smp, k, block_size, distance_dtype)
  bs_ref, bs_smp = min(block_size, ref.shape[0]), min(block_size, smp.shape[0])
  ref_in = np.zeros(ref.shape[0], bool)  # reference point covered by a sample ball -> recall
  smp_in = np.zeros(smp.shape[0], bool)  # sample point covered by a reference ball -> precision
  smp_blocks = [
    (c0, jnp.asarray(v), jnp.asarray(rv), nv)
    for (c0, v, nv), (_, rv, _) in zip(_blocks(smp, bs_smp), _blocks(smp_r, bs_smp))
  ]
  for (r0, u, nu), (_, ru, _) in zip(_blocks(ref, bs_ref), _blocks(ref_r, bs_ref)):
    u, ru = jnp.asarray(u), jnp.asarray(ru)
    for c0, v, rv, nv in smp_blocks:
      a, b = _inside(u, ru, nu, v, rv, nv, distance_dtype)
      ref_in[r0 : r0 + nu] |= np.asarray(a)[:nu]
      smp_in[c0 : c0 + nv] |= np.asarray(b)[:nv]
  return {"precision": float(smp_in.mean()), "recall": float(ref_in.mean())}
