"""Sample export (image_export.py): [-1, 1] floats to uint8 both official ways, samples npz, PNG grids."""

import os

import numpy as np
import pytest
from PIL import Image

from dxmi_jax import image_export


def test_to_uint8_closed_form_values():
  x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0, -1 + 1 / 255, -1 + 0.99 / 127.5], np.float32)
  np.testing.assert_array_equal(image_export.to_uint8(x, "round"), [0, 0, 128, 255, 255, 1, 1])
  np.testing.assert_array_equal(image_export.to_uint8(x, "truncate"), [0, 0, 127, 255, 255, 0, 0])


def test_to_uint8_matches_official_torch_ops():
  torch = pytest.importorskip("torch", reason="compares with the torch conversion ops")
  rng = np.random.default_rng(11)
  x = (1.2 * rng.uniform(-1, 1, (4, 16, 16, 3))).astype(np.float32)
  t = torch.from_numpy(x)
  # CIFAR: rescale + clamp, then torchvision save_image's mul(255).add_(0.5).clamp_(0, 255).
  cifar = ((t - (-1)) / 2).clamp(0, 1).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
  # ImageNet: ((x + 1) * 127.5).clamp(0, 255).to(uint8).
  imnet = ((t + 1) * 127.5).clamp(0, 255).to(torch.uint8)
  np.testing.assert_array_equal(image_export.to_uint8(x, "round"), cifar.numpy())
  np.testing.assert_array_equal(image_export.to_uint8(x, "truncate"), imnet.numpy())


def test_to_uint8_errors():
  with pytest.raises(image_export.SampleExportError, match="NaN"):
    image_export.to_uint8(np.array([0.0, np.nan]))
  with pytest.raises(image_export.SampleExportError, match="float"):
    image_export.to_uint8(np.zeros(3, np.uint8))
  with pytest.raises(image_export.SampleExportError, match="rounding"):
    image_export.to_uint8(np.zeros(3), "nearest")


def test_save_samples_npz_roundtrip_and_atomicity(tmp_path):
  rng = np.random.default_rng(12)
  imgs = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
  path = tmp_path / "samples_6x4x4x3"  # no extension: the exact name is kept
  image_export.save_samples_npz(path, imgs, labels=np.arange(6))
  with np.load(path) as z:
    np.testing.assert_array_equal(z["arr_0"], imgs)
    np.testing.assert_array_equal(z["arr_1"], np.arange(6))
  with pytest.raises(image_export.SampleExportError, match="labels"):
    image_export.save_samples_npz(tmp_path / "bad.npz", imgs, labels=np.arange(5))
  with pytest.raises(image_export.SampleExportError, match="uint8"):
    image_export.save_samples_npz(tmp_path / "bad.npz", imgs.astype(np.float32))
  assert sorted(os.listdir(tmp_path)) == ["samples_6x4x4x3"]


def test_image_grid_layout(tmp_path):
  imgs = np.stack([np.full((3, 2, 3), 10 * (i + 1), np.uint8) for i in range(5)])
  grid = image_export.make_grid(imgs, nrow=2)
  # torchvision make_grid: 2 per row, 3 rows, 2 px padding around every cell.
  assert grid.shape == (3 * 5 + 2, 2 * 4 + 2, 3)
  for i in range(5):
    r, c = divmod(i, 2)
    np.testing.assert_array_equal(grid[r * 5 + 2 : r * 5 + 5, c * 4 + 2 : c * 4 + 4], imgs[i])
  assert grid.sum() == imgs.sum()  # everything else is padding (0)
  image_export.save_image_grid(tmp_path / "grid.png", imgs, nrow=2)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grid.png")), grid)
  np.testing.assert_array_equal(image_export.make_grid(imgs[:1]), imgs[0])
