"""The vector data (data/toy2d.py): 8 Gaussians as defined, and .npy files with their errors."""

import numpy as np
import pytest


def test_8gaussians_matches_definition():
  from dxmi_jax.data import toy2d  # pylint: disable=import-outside-toplevel

  x = toy2d.sample2d("8gaussians", 40000, np.random.default_rng(0)) * 1.414
  r = np.linalg.norm(x, axis=1)
  ang = np.mod(np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)), 8)
  centres = 4 * np.stack([np.cos(ang * np.pi / 4), np.sin(ang * np.pi / 4)], 1)
  resid = x - centres
  np.testing.assert_allclose(resid.std(0), 0.5, rtol=0.02)
  np.testing.assert_allclose(np.median(r), 4.0, rtol=0.02)
  np.testing.assert_allclose(np.bincount(ang.astype(int), minlength=8) / len(x), 1 / 8, atol=0.01)


def test_npy_data_errors(tmp_path):
  from dxmi_jax.data import toy2d  # pylint: disable=import-outside-toplevel

  good = tmp_path / "pts.npy"
  np.save(good, np.random.default_rng(0).standard_normal((100, 3)).astype(np.float32))
  d = toy2d.VectorData("npy", 0, str(good))
  assert d.dim == 3 and d.batch(7, 32).shape == (32, 3)
  np.testing.assert_array_equal(d.batch(7, 32), toy2d.VectorData("npy", 0, str(good)).batch(7, 32))
  bad = tmp_path / "bad.npy"
  np.save(bad, np.zeros((10,)))
  with pytest.raises(ValueError, match="config.data.path.*shape"):
    toy2d.VectorData("npy", 0, str(bad))
  junk = tmp_path / "junk.npy"
  junk.write_bytes(b"not numpy")
  with pytest.raises(ValueError, match="config.data.path.*not a readable"):
    toy2d.VectorData("npy", 0, str(junk))
  with pytest.raises(ValueError, match="config.data.path: file not found"):
    toy2d.VectorData("npy", 0, str(tmp_path / "missing.npy"))
  with pytest.raises(ValueError, match="config.data.name"):
    toy2d.VectorData("spiral", 0)
