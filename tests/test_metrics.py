"""The metrics package: streaming statistics, Fréchet distance, precision/recall, IS (no Inception)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import linalg
from scipy.spatial import distance

from dxmi_jax.metrics import features as features_lib
from dxmi_jax.metrics import fid as fid_lib
from dxmi_jax.metrics import inception_score as is_lib
from dxmi_jax.metrics import precision_recall as pr_lib


def _spd(rng, d, scale=1.0):
  a = rng.standard_normal((d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ------------------------------------------------------------------ streaming statistics


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_running_statistics_match_numpy(offset):
  rng = np.random.default_rng(0)
  x = offset + rng.standard_normal((103, 16)) * rng.uniform(0.1, 3, 16)
  stats = features_lib.RunningStatistics()
  for lo, hi in [(0, 1), (1, 40), (40, 41), (41, 100), (100, 103)]:
    stats.update(x[lo:hi].astype(np.float64))
  assert stats.n == 103
  np.testing.assert_allclose(stats.mean, np.mean(x, axis=0), rtol=1e-12)
  # Centred reference: exact even with a large offset, where a raw sum of squares
  # (E[x^2] - E[x]^2) would lose every digit.
  np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-7, atol=1e-9)


def test_running_statistics_reject_bad_features():
  stats = features_lib.RunningStatistics()
  with pytest.raises(features_lib.NonFiniteFeaturesError):
    stats.update(np.array([[0.0, np.nan]]))
  stats.update(np.zeros((3, 2)))
  with pytest.raises(features_lib.EvaluationInputError, match="dimension"):
    stats.update(np.zeros((3, 4)))
  with pytest.raises(features_lib.EvaluationInputError):
    _ = features_lib.RunningStatistics().update(np.zeros((1, 2))).covariance


def test_rechunk_regroups_exactly():
  parts = [np.arange(n) for n in (3, 0, 7, 1, 5)]
  out = list(features_lib.rechunk(parts, 4))
  assert [len(o) for o in out] == [4, 4, 4, 4]
  np.testing.assert_array_equal(np.concatenate(out), np.concatenate(parts))


def test_sharded_runner_pads_and_drops_on_two_devices():
  """Two fake CPU devices: batches are split over the 'data' mesh, padding is dropped."""
  code = textwrap.dedent("""
      import numpy as np, jax, jax.numpy as jnp
      from dxmi_jax.metrics.features import ShardedBatchRunner
      assert jax.device_count() == 2
      seen = []
      @jax.jit
      def fn(w, x):
        return (x.astype(jnp.float32).sum(axis=(1, 2, 3)) * w, x[:, 0, 0, 0])
      r = ShardedBatchRunner(fn, jnp.float32(2.0), batch_size=3)
      assert r.batch_size == 4 and r.num_devices == 2
      x = np.arange(7 * 2 * 2 * 3, dtype=np.uint8).reshape(7, 2, 2, 3)
      put, n = r._put(x[4:])
      assert n == 3 and put.shape[0] == 4
      assert len(put.sharding.device_set) == 2 and put.sharding.spec == jax.sharding.PartitionSpec("data")
      outs = list(r.run([x[:4], x[4:]]))
      s = np.concatenate([o[0] for o in outs]); f = np.concatenate([o[1] for o in outs])
      np.testing.assert_allclose(s, 2 * x.reshape(7, -1).sum(1).astype(np.float32))
      np.testing.assert_array_equal(f, x[:, 0, 0, 0])
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False)
  assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]


# ------------------------------------------------------------------ Fréchet distance


def _frechet_eigh(mu1, s1, mu2, s2):
  """Closed form via the symmetric square root: tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)."""
  w, v = np.linalg.eigh(s1)
  r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  m = r1 @ s2 @ r1
  wm = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(wm)))


def test_frechet_identical_is_zero():
  rng = np.random.default_rng(1)
  mu, s = rng.standard_normal(32), _spd(rng, 32)
  assert abs(fid_lib.frechet_distance(mu, s, mu, s)) < 1e-9


def test_frechet_diagonal_gaussians_closed_form():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
  a, b = rng.uniform(0.1, 4, 10), rng.uniform(0.1, 4, 10)
  expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(fid_lib.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expect, rtol=1e-10)


def test_frechet_matches_symmetric_formula_on_random_features():
  rng = np.random.default_rng(3)
  f1 = rng.standard_normal((400, 24)) @ rng.standard_normal((24, 24))
  f2 = 0.3 + rng.standard_normal((300, 24)) @ rng.standard_normal((24, 24))
  args = (f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
  np.testing.assert_allclose(fid_lib.frechet_distance(*args), _frechet_eigh(*args), rtol=1e-8)


def test_frechet_retries_with_offset_when_sqrtm_is_not_finite(monkeypatch):
  rng = np.random.default_rng(4)
  s1, s2 = _spd(rng, 6), _spd(rng, 6)
  calls = []

  def fake_sqrtm(a):
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else linalg.sqrtm(a)

  monkeypatch.setattr(fid_lib, "_sqrtm", fake_sqrtm)
  got = fid_lib.frechet_distance(np.zeros(6), s1, np.zeros(6), s2)
  off = 1e-6 * np.eye(6)
  np.testing.assert_allclose(calls[1], (s1 + off) @ (s2 + off), rtol=1e-14)
  # Like pytorch-fid / OpenAI, the offset enters only the sqrtm term, not the traces.
  expect = _frechet_eigh(np.zeros(6), s1 + off, np.zeros(6), s2 + off) - 2 * np.trace(off)
  np.testing.assert_allclose(got, expect, rtol=1e-8)


@pytest.mark.parametrize("imag, ok", [(5e-4, True), (5e-3, False)])
def test_frechet_imaginary_diagonal_rule(monkeypatch, imag, ok):
  rng = np.random.default_rng(5)
  s = _spd(rng, 4)
  root = linalg.sqrtm(s @ s).real
  monkeypatch.setattr(fid_lib, "_sqrtm", lambda a: root + 1j * imag * np.eye(4))
  if ok:
    assert abs(fid_lib.frechet_distance(np.zeros(4), s, np.zeros(4), s)) < 1e-9
  else:
    with pytest.raises(fid_lib.FrechetDistanceError, match="imaginary"):
      fid_lib.frechet_distance(np.zeros(4), s, np.zeros(4), s)


def test_frechet_rejects_bad_statistics():
  with pytest.raises(fid_lib.FrechetDistanceError, match="shape"):
    fid_lib.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(features_lib.NonFiniteFeaturesError):
    fid_lib.frechet_distance(np.array([0, np.nan]), np.eye(2), np.zeros(2), np.eye(2))
  assert issubclass(fid_lib.FrechetDistanceError, ValueError)


class _FakeExtractor:
  """Maps each image to a feature row (its flattened pixels as float)."""

  name = features_lib.FEATURE_EXTRACTOR

  def statistics(self, images, name="images"):
    x = features_lib.validate_images(images, name).reshape(len(images), -1).astype(np.float64)
    return features_lib.RunningStatistics().update(x)


def test_fid_proxy_is_named_by_sample_count():
  rng = np.random.default_rng(6)
  imgs = rng.integers(0, 256, (20, 2, 1, 3), dtype=np.uint8)
  ref = rng.integers(0, 256, (30, 2, 1, 3), dtype=np.uint8).reshape(30, -1).astype(np.float64)
  mu2, s2 = ref.mean(0), np.cov(ref, rowvar=False)
  out = fid_lib.fid_proxy(imgs, (mu2, s2), _FakeExtractor())
  f = imgs.reshape(20, -1).astype(np.float64)
  assert list(out) == ["fid_proxy_20"]
  np.testing.assert_allclose(out["fid_proxy_20"], _frechet_eigh(f.mean(0), np.cov(f, rowvar=False), mu2, s2), rtol=1e-7)
  stats = fid_lib.ReferenceStatistics(mu=mu2, sigma=s2, n=30)
  assert fid_lib.fid_proxy(imgs, stats, _FakeExtractor()) == out


# ------------------------------------------------------------------ reference files


def test_reference_roundtrip_and_openai_format(tmp_path):
  rng = np.random.default_rng(7)
  feats = rng.standard_normal((12, 2048)).astype(np.float32)
  ref = fid_lib.ReferenceStatistics(
    mu=feats.mean(0).astype(np.float64),
    sigma=np.cov(feats, rowvar=False),
    n=12,
    features=feats,
    protocol="p",
    source="tfds:x:train",
  )
  path = tmp_path / "ref.npz"
  fid_lib.save_reference(path, ref)
  assert os.listdir(tmp_path) == ["ref.npz"]
  back = fid_lib.load_reference(path)
  np.testing.assert_array_equal(back.sigma, ref.sigma)
  np.testing.assert_array_equal(back.features, feats)
  assert (back.n, back.protocol, back.source) == (12, "p", "tfds:x:train")
  assert back.feature_extractor == features_lib.FEATURE_EXTRACTOR

  virtual = tmp_path / "VIRTUAL_test.npz"
  imgs = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  np.savez(virtual, arr_0=imgs, mu=ref.mu, sigma=ref.sigma, mu_s=np.zeros(3), sigma_s=np.eye(3))
  v = fid_lib.load_reference(virtual)
  assert v.feature_extractor == fid_lib.OPENAI_TF_EXTRACTOR and v.images.shape == (5, 8, 8, 3)


@pytest.mark.parametrize(
  "arrays, match",
  [
    (dict(labels=np.zeros(3)), "neither statistics"),
    (dict(mu=np.zeros(2048)), "only one of"),
    (dict(mu=np.zeros(10), sigma=np.eye(10)), "dimension 10"),
    (dict(mu=np.full(2048, np.nan), sigma=np.eye(2048)), "NaN"),
    (dict(arr_0=np.zeros((0, 8, 8, 3), np.uint8)), "no images"),
    (dict(arr_0=np.zeros((2, 8, 8, 3), np.float32)), "uint8"),
  ],
)
def test_reference_errors(tmp_path, arrays, match):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(features_lib.EvaluationInputError, match=match):
    fid_lib.load_reference(path)


def test_save_reference_without_statistics_writes_nothing(tmp_path):
  with pytest.raises(fid_lib.ReferenceFileError):
    fid_lib.save_reference(tmp_path / "x.npz", fid_lib.ReferenceStatistics(features=np.zeros((2, 2))))
  assert not os.listdir(tmp_path)


# ------------------------------------------------------------------ precision / recall


def _pr_bruteforce(ref, smp, k=3):
  """OpenAI semantics on full float64 matrices: radius = sorted row entry k (self included)."""
  r_ref = np.sort(distance.cdist(ref, ref, "sqeuclidean"), axis=1)[:, k]
  r_smp = np.sort(distance.cdist(smp, smp, "sqeuclidean"), axis=1)[:, k]
  d = distance.cdist(ref, smp, "sqeuclidean")
  precision = np.mean(np.any(d <= r_ref[:, None], axis=0))
  recall = np.mean(np.any(d <= r_smp[None, :], axis=1))
  return r_ref, r_smp, precision, recall


@pytest.mark.parametrize("block", [10_000, 16])
def test_precision_recall_matches_bruteforce(block):
  rng = np.random.default_rng(8)
  ref = rng.standard_normal((41, 8)).astype(np.float32)
  smp = (0.7 + 1.5 * rng.standard_normal((29, 8))).astype(np.float32)
  r_ref, r_smp, p, r = _pr_bruteforce(ref.astype(np.float64), smp.astype(np.float64))
  np.testing.assert_allclose(pr_lib.manifold_radii(ref, block_size=block), r_ref, rtol=1e-5)
  np.testing.assert_allclose(pr_lib.manifold_radii(smp, block_size=block), r_smp, rtol=1e-5)
  got = pr_lib.precision_recall(ref, smp, block_size=block)
  assert 0 < p < 1 and 0 < r < 1
  assert got == {"precision": p, "recall": r}
  # Reference first: swapping the arguments swaps the two numbers.
  assert pr_lib.precision_recall(smp, ref, block_size=block) == {"precision": r, "recall": p}


def test_precision_recall_limits():
  rng = np.random.default_rng(9)
  a = rng.standard_normal((20, 5)).astype(np.float32)
  assert pr_lib.precision_recall(a, a) == {"precision": 1.0, "recall": 1.0}
  assert pr_lib.precision_recall(a, a + 100.0) == {"precision": 0.0, "recall": 0.0}
  # fp16 distance blocks (OpenAI's scheme) agree when nothing sits on a ball boundary.
  assert pr_lib.precision_recall(a, a + 100.0, distance_dtype="float16") == {"precision": 0.0, "recall": 0.0}
  # Overflowing fp16 (|u|^2 > 65504) falls back to float32.
  big = a * 300.0
  np.testing.assert_allclose(
    pr_lib.manifold_radii(big, distance_dtype="float16"), pr_lib.manifold_radii(big), rtol=1e-5
  )


def test_precision_recall_input_errors():
  a = np.zeros((3, 4), np.float32)
  with pytest.raises(features_lib.EvaluationInputError, match="at least 4"):
    pr_lib.precision_recall(a, np.zeros((10, 4)))
  with pytest.raises(features_lib.NonFiniteFeaturesError):
    pr_lib.precision_recall(np.full((5, 4), np.nan), np.zeros((5, 4)))
  with pytest.raises(features_lib.EvaluationInputError, match="dimension"):
    pr_lib.precision_recall(np.zeros((5, 4)), np.zeros((5, 3)))


# ------------------------------------------------------------------ Inception score


def test_inception_score_closed_forms():
  assert is_lib.inception_score(np.zeros((40, 1008)), num_splits=4) == pytest.approx((1.0, 0.0))
  c = 8  # every split holds each of c classes equally often, with one-hot predictions
  logits = 60.0 * np.eye(c)[np.tile(np.arange(c), 10)]
  mean, std = is_lib.inception_score(logits, num_splits=5)
  assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_improved_gan_formula():
  rng = np.random.default_rng(10)
  logits = 3 * rng.standard_normal((103, 17))
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  scores = []
  for i in range(10):
    part = p[i * 103 // 10 : (i + 1) * 103 // 10]
    kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
    scores.append(np.exp(kl.sum(1).mean()))
  mean, std = is_lib.inception_score(logits)
  np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores)], rtol=1e-10)


def test_inception_score_errors():
  with pytest.raises(features_lib.EvaluationInputError, match="splits"):
    is_lib.inception_score(np.zeros((5, 10)), num_splits=10)
  with pytest.raises(features_lib.NonFiniteFeaturesError):
    is_lib.inception_score(np.full((20, 10), np.inf))
