"""``python -m dxmi_jax.metrics``: stats caching, metrics, and one-line errors on bad input.

The Inception runs with the golden A5 recipe weights (saved as a torch-layout
.npz, so no torch is needed) on 64x64 images at batch 2: one compile for the
whole module.

A 2048-d ``scipy.linalg.sqrtm`` takes tens of seconds on the 2-core test
machine, so these tests replace ``fid.frechet_distance`` by a recorder and
check that it receives exactly the right statistics; the distance itself is
tested against closed forms in test_metrics.py.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from dxmi_jax.metrics import __main__ as metrics_cli
from dxmi_jax.metrics import features as features_lib
from dxmi_jax.metrics import fid as fid_lib
from dxmi_jax.metrics import inception_score as is_lib
from dxmi_jax.metrics import precision_recall as pr_lib
from dxmi_jax.models import inception
from conftest import golden_path  # pylint: disable=wrong-import-order


N = 4  # samples are images[:N], reference images[N:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp("evalcli")


@pytest.fixture(scope="module")
def weights(workdir):
  sd = inception.recipe_state_dict(golden_path("inception_fid_keys.txt"))
  path = workdir / "fid_weights.npz"
  np.savez(path, **sd)
  return str(path)


@pytest.fixture(scope="module")
def images():
  """8 images 64x64: the 2 golden ones, then smooth and random ones (4 samples, 4 reference)."""
  with np.load(golden_path("inception_fid_io.npz")) as z:
    gold = np.round(z["x"] * 255).astype(np.uint8).transpose(0, 2, 3, 1)
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:64, 0:64] / 64.0
  smooth = [
    np.stack([np.sin(6 * f * xx + c) * np.cos(4 * yy * f) for c in range(3)], -1) for f in rng.uniform(0.5, 3, 3)
  ]
  smooth = np.round((np.stack(smooth) + 1) * 127.5).astype(np.uint8)
  noise = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
  return np.concatenate([gold, smooth, noise])


@pytest.fixture(scope="module")
def extractor(weights):
  return features_lib.InceptionFeatureExtractor.from_weights(weights, batch_size=2)


@pytest.fixture(scope="module")
def feats(extractor, images):
  return extractor.features(images)


@pytest.fixture(scope="module")
def files(workdir, images):
  samples, ref = workdir / "samples.npz", workdir / "ref_images.npz"
  np.savez(samples, arr_0=images[:N])
  np.savez(ref, arr_0=images[N:])
  return str(samples), str(ref)


@pytest.fixture
def fid_calls(monkeypatch):
  """Records the statistics handed to the Fréchet distance; returns |mu1 - mu2|^2."""
  calls = []

  def recorder(mu1, sigma1, mu2, sigma2):
    calls.append(tuple(np.asarray(a, np.float64) for a in (mu1, sigma1, mu2, sigma2)))
    return float(np.sum((calls[-1][0] - calls[-1][2]) ** 2))

  monkeypatch.setattr(fid_lib, "frechet_distance", recorder)
  return calls


def _stats(f):
  f = np.asarray(f, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


def _assert_stats(call, f_smp, ref_mu, ref_sigma):
  mu1, s1 = _stats(f_smp)
  for got, want in zip(call, (mu1, s1, ref_mu, ref_sigma)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _run(capsys, *argv):
  rc = metrics_cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def test_stats_then_evaluate_matches_library(capsys, workdir, weights, files, feats, fid_calls):
  samples, ref_images = files
  ref_stats = workdir / "ref_stats.npz"
  rc, out, err = _run(
    capsys, "stats", f"--npz={ref_images}", f"--out={ref_stats}", f"--inception_weights={weights}", "--batch_size=2"
  )
  assert rc == 0, err
  assert "wrote" in out
  ref = fid_lib.load_reference(ref_stats)
  f_ref, f_smp = feats["pool3"][N:].astype(np.float64), feats["pool3"][:N].astype(np.float64)
  assert ref.n == N and ref.feature_extractor == features_lib.FEATURE_EXTRACTOR
  np.testing.assert_allclose(ref.mu, f_ref.mean(0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ref.sigma, np.cov(f_ref, rowvar=False), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ref.features, feats["pool3"][N:], rtol=1e-6, atol=1e-7)

  out_json = workdir / "res.json"
  rc, out, err = _run(
    capsys,
    samples,
    ref_stats,
    f"--inception_weights={weights}",
    "--batch_size=2",
    "--is_splits=2",
    f"--json={out_json}",
  )
  assert rc == 0, err
  res = json.loads(out_json.read_text())
  assert len(fid_calls) == 1
  _assert_stats(fid_calls[0], f_smp, *_stats(f_ref))
  assert "fid" not in res  # 4 samples: only a proxy
  assert res["fid_proxy_4"] == pytest.approx(np.sum((fid_calls[0][0] - fid_calls[0][2]) ** 2))
  pr = pr_lib.precision_recall(feats["pool3"][N:], feats["pool3"][:N])
  assert (res["precision"], res["recall"]) == (pr["precision"], pr["recall"])
  is_mean, _ = is_lib.inception_score(feats["logits_unbiased"][:N], num_splits=2)
  np.testing.assert_allclose(res["inception_score"], is_mean, rtol=1e-5)
  for line in (
    "fid_proxy_4: ",
    "precision: ",
    "recall: ",
    "inception_score: ",
    "(4 images)",
    "differs slightly from OpenAI's TF evaluator",
  ):
    assert line in out


def test_evaluate_against_itself_is_perfect(capsys, weights, files, feats, fid_calls):
  samples, _ = files
  rc, out, err = _run(capsys, samples, samples, f"--inception_weights={weights}", "--batch_size=2", "--is_splits=3")
  assert rc == 0, err
  vals = dict(l.split(": ", 1) for l in out.splitlines() if ": " in l)
  _assert_stats(fid_calls[0], feats["pool3"][:N], *_stats(feats["pool3"][:N]))
  assert float(vals["precision"]) == 1.0 and float(vals["recall"]) == 1.0
  assert "(3 splits)" in vals["inception_score"]


def test_openai_style_reference_uses_stored_stats_and_notes_the_extractor(
  capsys, workdir, weights, files, images, feats, fid_calls
):
  samples, _ = files
  f_ref = feats["pool3"][N:].astype(np.float64)
  virtual = workdir / "VIRTUAL_tiny.npz"
  np.savez(virtual, arr_0=images[N:], mu=f_ref.mean(0) + 1.0, sigma=np.cov(f_ref, rowvar=False))
  rc, out, err = _run(capsys, samples, virtual, f"--inception_weights={weights}", "--batch_size=2", "--is_splits=2")
  assert rc == 0, err
  assert "different feature extractor" in out
  mu_ref, sigma_ref = _stats(f_ref)
  _assert_stats(fid_calls[0], feats["pool3"][:N], mu_ref + 1.0, sigma_ref)  # stored stats
  rc, out, err = _run(
    capsys,
    samples,
    virtual,
    f"--inception_weights={weights}",
    "--batch_size=2",
    "--is_splits=2",
    "--recompute_reference_stats",
  )
  assert rc == 0, err
  assert "different feature extractor" not in out
  _assert_stats(fid_calls[1], feats["pool3"][:N], mu_ref, sigma_ref)  # recomputed from arr_0


def test_stats_from_folder_equals_npz(capsys, workdir, weights, images, feats):
  folder = workdir / "pngs"
  folder.mkdir()
  for i, im in enumerate(images[N:]):
    Image.fromarray(im).save(folder / f"{i:03d}.png")
  out_path = workdir / "ref_folder.npz"
  rc, _, err = _run(
    capsys,
    "stats",
    f"--folder={folder}",
    f"--out={out_path}",
    f"--inception_weights={weights}",
    "--batch_size=2",
    "--pr_features=3",
  )
  assert rc == 0, err
  a = fid_lib.load_reference(out_path)
  mu, sigma = _stats(feats["pool3"][N:])  # PNG is lossless: the same pixels
  np.testing.assert_allclose(a.mu, mu, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(a.sigma, sigma, rtol=1e-5, atol=1e-6)
  assert a.features.shape == (3, 2048) and a.source.startswith("folder:")


class _FakeSource(list):
  pass


def test_stats_from_tfds_data_source(capsys, monkeypatch, workdir, weights, images):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  calls = {}

  def fake_data_source(name, split=None, data_dir=None):
    calls.update(name=name, split=split, data_dir=data_dir)
    return _FakeSource({"image": im, "label": 0} for im in images[:5])

  monkeypatch.setattr(tfds, "data_source", fake_data_source)
  out_path = workdir / "ref_tfds.npz"
  rc, _, err = _run(
    capsys,
    "stats",
    "--tfds=cifar10:3.0.2:train[:5]",
    f"--out={out_path}",
    "--data_dir=/nowhere",
    f"--inception_weights={weights}",
    "--batch_size=2",
    "--max_images=3",
  )
  assert rc == 0, err
  assert calls == {"name": "cifar10:3.0.2", "split": "train[:5]", "data_dir": "/nowhere"}
  ref = fid_lib.load_reference(out_path)
  assert ref.n == 3 and ref.source == "tfds:cifar10:3.0.2:train[:5]"


# ------------------------------------------------------------------ bad input: one line, exit 1


def _assert_one_line_error(rc, err, *needles):
  assert rc == 1
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  for n in needles:
    assert n in lines[0], lines[0]


@pytest.mark.parametrize(
  "arrays, needle",
  [
    ({}, "empty npz"),
    ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, "no 'arr_0'"),
    ({"arr_0": np.zeros((2, 8, 8, 3), np.float32)}, "uint8"),
    ({"arr_0": np.zeros((2, 8, 8), np.uint8)}, "NHWC"),
    ({"arr_0": np.zeros((0, 8, 8, 3), np.uint8)}, "no images"),
  ],
)
def test_bad_samples(capsys, tmp_path, files, arrays, needle):
  bad = tmp_path / "bad.npz"
  np.savez(bad, **arrays)
  rc, _, err = _run(capsys, bad, files[1])
  _assert_one_line_error(rc, err, needle, str(bad))


def test_missing_files_and_bad_reference(capsys, tmp_path, files):
  samples, _ = files
  rc, _, err = _run(capsys, tmp_path / "nope.npz", samples)
  _assert_one_line_error(rc, err, "not found")
  empty_ref = tmp_path / "ref.npz"
  np.savez(empty_ref, labels=np.arange(3))
  rc, _, err = _run(capsys, samples, empty_ref)
  _assert_one_line_error(rc, err, "neither statistics", "nor images")
  np.savez(empty_ref, mu=np.zeros(2048), sigma=np.eye(2048))
  rc, _, err = _run(capsys, samples, empty_ref, "--recompute_reference_stats")
  _assert_one_line_error(rc, err, "arr_0")


def test_missing_weights_message(capsys, monkeypatch, tmp_path, files):
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  monkeypatch.setattr(inception, "TORCH_HUB_CACHE", tmp_path / "none.pth")
  out_path = tmp_path / "ref.npz"
  rc, _, err = _run(capsys, "stats", f"--npz={files[1]}", f"--out={out_path}")
  _assert_one_line_error(rc, err, inception.FID_WEIGHTS_URL, "--inception_weights", "DXMI_INCEPTION_WEIGHTS")
  assert not os.listdir(tmp_path)


def test_mixed_sizes_in_folder_write_nothing(capsys, tmp_path, weights):
  folder = tmp_path / "imgs"
  folder.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
  Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(folder / "b.png")
  out_path = tmp_path / "ref.npz"
  rc, _, err = _run(
    capsys, "stats", f"--folder={folder}", f"--out={out_path}", f"--inception_weights={weights}", "--batch_size=2"
  )
  _assert_one_line_error(rc, err, "same size", "b.png")
  assert sorted(os.listdir(tmp_path)) == ["imgs"]


def test_nan_features_write_nothing(capsys, tmp_path, weights, files):
  with np.load(weights) as z:
    sd = {k: z[k] for k in z.files}
  # NaN passes the converter's check only if it is created by the network: a huge
  # running_var -> 0 * inf.  Use inf-producing scale instead: an overflowing BN weight.
  sd["Conv2d_1a_3x3.bn.weight"] = np.full_like(sd["Conv2d_1a_3x3.bn.weight"], 3e38)
  sd["Conv2d_2a_3x3.bn.weight"] = np.full_like(sd["Conv2d_2a_3x3.bn.weight"], 3e38)
  bad_weights = tmp_path / "overflow.npz"
  np.savez(bad_weights, **sd)
  out_dir = tmp_path / "out"
  rc, _, err = _run(
    capsys,
    "stats",
    f"--npz={files[1]}",
    f"--out={out_dir / 'ref.npz'}",
    f"--inception_weights={bad_weights}",
    "--batch_size=2",
  )
  _assert_one_line_error(rc, err, "NaN/inf features")
  assert not out_dir.exists() or not os.listdir(out_dir)
