"""shuffle.permutation: a uniform random permutation from packed single-array sorts."""

import math

import jax
import numpy as np
import pytest

from dxmi_jax import shuffle


@pytest.mark.parametrize("n", [1, 2, 7, 64, 2560])
def test_is_a_permutation(n):
  perm = jax.jit(shuffle.permutation, static_argnums=1)
  for seed in range(3):
    p = np.asarray(perm(jax.random.key(seed), n))
    assert p.dtype == np.int32
    np.testing.assert_array_equal(np.sort(p), np.arange(n))


def test_rounds_follow_jax_criterion():
  # rounds * (32 - position bits) >= 3 log2 n, the fewest such rounds
  for n in [2, 100, 2560, 5120, 1 << 16, (1 << 20) + 3, 1 << 24]:
    p = (n - 1).bit_length()
    r = shuffle.packed_rounds(n)
    assert r * (32 - p) >= 3 * math.log2(n) > (r - 1) * (32 - p)
  assert shuffle.packed_rounds(2560) == 2
  assert shuffle.packed_rounds((1 << 24) + 1) == 0  # too many positions: jax's permutation


def test_fallback_for_many_positions(monkeypatch):
  monkeypatch.setattr(shuffle, "MAX_PACKED_POSITION_BITS", 6)  # 2**24 rows in production
  assert shuffle.packed_rounds(64) == 1 and shuffle.packed_rounds(65) == 0
  p = shuffle.permutation(jax.random.key(0), 100)
  np.testing.assert_array_equal(np.asarray(p), np.asarray(jax.random.permutation(jax.random.key(0), 100)))


def test_uniform_positions():
  """Every element is equally likely at every position (chi-square over 600 draws of n = 6)."""
  n, draws = 6, 600
  perms = np.asarray(jax.vmap(lambda k: shuffle.permutation(k, n))(jax.random.split(jax.random.key(1), draws)))
  counts = np.zeros((n, n))
  for p in perms:
    counts[p, np.arange(n)] += 1
  expected = draws / n
  chi2 = ((counts - expected) ** 2 / expected).sum()
  # 25 degrees of freedom: P(chi2 > 52.6) = 0.001
  assert chi2 < 52.6, counts
  # and every one of the 720 permutations of 6 is reachable: many distinct ones appear
  assert len({tuple(p) for p in perms}) > 400


def test_prefix_is_a_uniform_subset():
  """The policy minibatch (first B of T*B rows) covers each buffer row with probability 1/T."""
  n, m, draws = 50, 10, 2000
  perms = np.asarray(jax.vmap(lambda k: shuffle.permutation(k, n))(jax.random.split(jax.random.key(2), draws)))
  hits = np.bincount(perms[:, :m].ravel(), minlength=n) / draws
  np.testing.assert_allclose(hits, m / n, atol=5 * math.sqrt((m / n) * (1 - m / n) / draws))
