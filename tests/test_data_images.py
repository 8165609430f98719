"""Image sources (tfds, folders, digits) and the deterministic batch loader."""

import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from PIL import Image

from dxmi_jax.data import digits as digits_lib
from dxmi_jax.data import images as images_lib
from dxmi_jax.data.loader import ImageLoader, prefetch_to_device

# ------------------------------------------------------------------------------------------------------------
# Helpers.
# ------------------------------------------------------------------------------------------------------------


def _pillow_adm(path, size):
  """guided-diffusion's center_crop_arr, written out directly with Pillow (independent of the package)."""
  img = Image.open(path)
  img.load()
  img = img.convert("RGB")
  while min(img.size) >= 2 * size:
    img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
  scale = size / min(img.size)
  img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), resample=Image.BICUBIC)
  a = np.array(img)
  y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
  return a[y0 : y0 + size, x0 : x0 + size]


def _pillow_lsun_export(path, size):
  """guided-diffusion's LSUN export (one BOX resize of the short side to `size`, center crop)."""
  img = Image.open(path).convert("RGB")
  w, h = img.size
  s = size / min(w, h)
  img = img.resize((int(round(s * w)), int(round(s * h))), resample=Image.BOX)
  a = np.array(img)
  y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
  return a[y0 : y0 + size, x0 : x0 + size]


def _random_image(rng, width, height, mode="RGB"):
  channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
  shape = (height, width) if channels is None else (height, width, channels)
  # Smooth-ish content so JPEG and resampling are non-trivial but not pure noise.
  base = rng.integers(0, 256, size=shape, dtype=np.uint8)
  return Image.fromarray(base)


# (synset, file name, (width, height), mode) of a tiny ImageNet-style train folder.
_IMAGENET_FILES = [
  ("n02000002", "n02000002_7.JPEG", (150, 90), "RGB"),
  ("n02000002", "n02000002_12.png", (40, 40), "RGBA"),
  ("n01000001", "n01000001_3.jpg", (64, 200), "RGB"),
  ("n01000001", "n01000001_10.PNG", (45, 22), "L"),
  ("n10000000", "n10000000_1.png", (33, 57), "RGB"),
  ("n10000000", "n10000000_2.png", (16, 33), "RGB"),  # odd vertical margin (17)
]


@pytest.fixture
def imagenet_dir(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / "train"
  for synset, fname, (w, h), mode in _IMAGENET_FILES:
    (root / synset).mkdir(parents=True, exist_ok=True)
    img = _random_image(rng, w, h, mode)
    img.save(root / synset / fname, format="JPEG" if fname.lower().endswith(("jpg", "jpeg")) else "PNG")
  (root / "n01000001" / "notes.txt").write_text("not an image")
  return root


class _IndexSource:
  """In-memory source whose image i encodes i, with a left/right asymmetric pattern to detect flips."""

  def __init__(self, n, h=3, w=5):
    self.n = n
    cols = np.arange(w, dtype=np.uint8) * 10  # distinct columns
    self.images = np.empty((n, h, w, 3), np.uint8)
    self.images[..., 0] = (np.arange(n) % 256).astype(np.uint8)[:, None, None]
    self.images[..., 1] = cols[None, None, :]
    self.images[..., 2] = 200
    self.reads = 0

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    self.reads += 1
    return {"image": self.images[i], "label": i % 7}


def _index_of(batch_images):
  """Recovers source indices from _IndexSource images in [-1, 1]."""
  return np.rint((batch_images[:, 0, 0, 0] + 1.0) * 127.5).astype(int)


# ------------------------------------------------------------------------------------------------------------
# ADM preprocessing and folder sources.
# ------------------------------------------------------------------------------------------------------------


def test_adm_center_crop_matches_direct_pillow_code(imagenet_dir):
  path = imagenet_dir / "n02000002" / "n02000002_7.JPEG"  # 150x90: two BOX halvings, then BICUBIC 27x16
  ours = images_lib.adm_center_crop(images_lib.load_rgb(path), 16)
  ref = _pillow_adm(path, 16)
  assert ours.shape == (16, 16, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, ref)


def test_adm_center_crop_closed_form_box_halving_and_crop():
  # 96x64 (W x H) image of constant 4x4 blocks: two exact BOX halvings give the 24x16 block grid, the short
  # side is then already 16 (BICUBIC to the same size is the identity), and the crop keeps columns 4..19.
  rng = np.random.default_rng(1)
  blocks = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
  img = Image.fromarray(np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1))
  out = images_lib.adm_center_crop(img, 16)
  np.testing.assert_array_equal(out, blocks[:, 4:20])
  # Portrait 64x100: halvings give 16x25 blocks; the odd margin 9 puts 4 rows above the crop, 5 below.
  blocks = rng.integers(0, 256, size=(25, 16, 3), dtype=np.uint8)
  img = Image.fromarray(np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1))
  np.testing.assert_array_equal(images_lib.adm_center_crop(img, 16), blocks[4:20])


def test_folder_source_imagenet_labels_order_and_pixels(imagenet_dir):
  src = images_lib.folder_source(imagenet_dir, 16, "adm_center_crop", class_cond=True)
  # Sorted traversal, synset labels in sorted order; the .txt file is ignored.
  expected_files = sorted([(s, f) for s, f, _, _ in _IMAGENET_FILES])
  assert [os.path.relpath(f, imagenet_dir).split(os.sep) for f in src.files] == [list(e) for e in expected_files]
  assert src.classes == ["n01000001", "n02000002", "n10000000"]
  assert len(src) == len(_IMAGENET_FILES)
  for i, (synset, fname) in enumerate(expected_files):
    item = src[i]
    assert item["label"] == src.classes.index(synset)
    assert item["image"].shape == (16, 16, 3) and item["image"].dtype == np.uint8
    np.testing.assert_array_equal(item["image"], _pillow_adm(imagenet_dir / synset / fname, 16))
  # Same labels when read from directory names.
  by_dir = images_lib.folder_source(imagenet_dir, 16, class_cond=True, label_from="directory")
  np.testing.assert_array_equal(by_dir.labels, src.labels)


def test_folder_source_lsun_nested_unconditional(tmp_path):
  rng = np.random.default_rng(2)
  root = tmp_path / "lsun"
  (root / "a" / "b").mkdir(parents=True)
  paths = [root / "x.png", root / "a" / "y.jpg", root / "a" / "b" / "z.bmp", root / "a" / "b" / "w.png"]
  for k, p in enumerate(paths):
    _random_image(rng, 30 + 7 * k, 20 + 3 * k).save(p)
  src = images_lib.folder_source(root, 12, "center_crop")
  assert [os.path.basename(f) for f in src.files] == ["w.png", "y.jpg", "x.png"]  # .bmp is not listed
  for i, f in enumerate(src.files):
    item = src[i]
    assert item["label"] == -1
    np.testing.assert_array_equal(item["image"], _pillow_lsun_export(f, 12))
  resized = images_lib.folder_source(root, 12, "resize")[0]["image"]
  assert resized.shape == (12, 12, 3)
  # label_from='directory' refuses files lying directly in the root.
  with pytest.raises(ValueError, match="directly in"):
    images_lib.folder_source(root, 12, class_cond=True, label_from="directory")


def test_folder_source_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"does not exist.*<synset>/<synset>_<n>\.JPEG"):
    images_lib.folder_source(tmp_path / "missing", 64)
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=r"config\.data\.path.*contains no image files"):
    images_lib.folder_source(tmp_path / "empty", 64)
  Image.new("RGB", (8, 8)).save(tmp_path / "empty" / "sub" / "noprefix.png")
  with pytest.raises(ValueError, match="file-name prefix"):
    images_lib.folder_source(tmp_path / "empty", 8, class_cond=True)
  with pytest.raises(ValueError, match="preprocessing must be one of"):
    images_lib.folder_source(tmp_path / "empty", 8, preprocessing="random_crop")
  with pytest.raises(ValueError, match="image_size"):
    images_lib.folder_source(tmp_path / "empty", 0)


# ------------------------------------------------------------------------------------------------------------
# TFDS sources (mock data: no TensorFlow, no download).
# ------------------------------------------------------------------------------------------------------------


def _tfds():
  return pytest.importorskip("tensorflow_datasets", reason="tfds sources need tensorflow-datasets")


def test_tfds_cifar10_on_mock_data_and_loader(tmp_path):
  tfds = _tfds()
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    raw = tfds.data_source("cifar10", split="train", data_dir=str(tmp_path), download=False)
    src = images_lib.tfds_source("cifar10", "train", data_dir=str(tmp_path))
    assert len(src) == 12 and src.num_classes == 10
    for i in range(12):
      item = src[i]
      assert item["image"].dtype == np.uint8 and item["image"].shape == (32, 32, 3)
      np.testing.assert_array_equal(item["image"], raw[i]["image"])
      assert item["label"] == int(raw[i]["label"])
    loader = ImageLoader(src, 4, seed=3, random_flip=True, process_index=0, process_count=1, num_workers=2)
    batch = loader.get_batch(1)
    idx, _ = loader.global_indices(1)
    flips = loader.flips(1)
    expected = (
      np.stack([raw[int(i)]["image"][:, ::-1] if f else raw[int(i)]["image"] for i, f in zip(idx, flips)]).astype(
        np.float32
      )
      / 127.5
      - 1
    )
    np.testing.assert_array_equal(batch["image"], expected)
    np.testing.assert_array_equal(batch["label"], [int(raw[int(i)]["label"]) for i in idx])
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32


def test_tfds_imagenet_resized_labels_remapped_to_sorted_synsets(tmp_path):
  tfds = _tfds()
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    name = "imagenet_resized/64x64"
    raw = tfds.data_source(name, split="train", data_dir=str(tmp_path), download=False)
    names = tfds.builder(name, data_dir=str(tmp_path)).info.features["label"].names
    assert names != sorted(names)  # TFDS order is map_clsloc.txt, not sorted synsets
    src = images_lib.tfds_source(name, "train", data_dir=str(tmp_path), image_size=32)
    kept = images_lib.tfds_source(name, "train", data_dir=str(tmp_path), synset_order_labels=False)
    sorted_names = sorted(names)
    changed = 0
    for i in range(20):
      raw_label = int(raw[i]["label"])
      assert src[i]["label"] == sorted_names.index(names[raw_label])
      assert kept[i]["label"] == raw_label
      changed += src[i]["label"] != raw_label
    assert changed > 0
    # image_size != stored size goes through the ADM preprocessing.
    expected = images_lib.adm_center_crop(Image.fromarray(raw[0]["image"]), 32)
    np.testing.assert_array_equal(src[0]["image"], expected)
    assert kept[0]["image"].shape == (64, 64, 3)


def test_tfds_missing_data_errors(tmp_path):
  _tfds()
  with pytest.raises(FileNotFoundError) as e:
    images_lib.tfds_source("cifar10", "train", data_dir=str(tmp_path))
  msg = str(e.value)
  assert f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record" in msg
  assert "config.data.tfds_data_dir" in msg and "not prepared" in msg
  with pytest.raises(FileNotFoundError, match=r"image-net\.org.*manual"):
    images_lib.tfds_source("imagenet_resized/64x64", "train", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="unknown TFDS data set 'no_such_dataset'"):
    images_lib.tfds_source("no_such_dataset", "train", data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------------------------
# Loader.
# ------------------------------------------------------------------------------------------------------------


def _loader(src, batch, seed=7, **kw):
  kw.setdefault("process_index", 0)
  kw.setdefault("process_count", 1)
  kw.setdefault("num_workers", 2)
  return ImageLoader(src, batch, seed, **kw)


def test_loader_values_and_determinism():
  src = _IndexSource(50)
  a = _loader(src, 8)
  b = _loader(_IndexSource(50), 8)
  assert a.steps_per_epoch == 6
  batch = a.get_batch(3)
  idx, mask = a.global_indices(3)
  assert mask.all()
  np.testing.assert_array_equal(batch["image"], src.images[idx].astype(np.float32) / 127.5 - 1)
  np.testing.assert_array_equal(batch["label"], idx % 7)
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  # Same (seed, step) -> identical, also from a fresh loader (resume); other steps/seeds differ.
  for step in (0, 3, 17):
    np.testing.assert_array_equal(a.get_batch(step)["image"], b.get_batch(step)["image"])
  assert not np.array_equal(a.get_batch(3)["image"], a.get_batch(4)["image"])
  assert not np.array_equal(a.global_indices(3)[0], _loader(src, 8, seed=8).global_indices(3)[0])
  # One epoch visits 6 * 8 distinct examples; the next epoch uses a new permutation.
  epoch0 = np.concatenate([_index_of(a.get_batch(s)["image"]) for s in range(6)])
  assert len(set(epoch0.tolist())) == 48
  epoch1 = np.concatenate([a.global_indices(s)[0] for s in range(6, 12)])
  assert not np.array_equal(epoch0, epoch1)
  # shuffle=False reads in order.
  np.testing.assert_array_equal(_loader(src, 8, shuffle=False).global_indices(7)[0], np.arange(8, 16))


def test_loader_process_slices_concatenate_to_global_batch():
  src = _IndexSource(64)
  single = _loader(src, 16, random_flip=True)
  for count in (2, 4):
    parts = [_loader(src, 16, random_flip=True, process_index=p, process_count=count) for p in range(count)]
    for step in (0, 5, 9):
      local = [p.get_batch(step) for p in parts]
      assert all(l["image"].shape[0] == 16 // count for l in local)
      glob = single.get_batch(step)
      for key in ("image", "label"):
        np.testing.assert_array_equal(np.concatenate([l[key] for l in local]), glob[key])


def test_loader_random_flip():
  src = _IndexSource(40)
  plain = _loader(src, 8)
  flip = _loader(src, 8, random_flip=True)
  assert not plain.flips(2).any()
  n_flipped = 0
  for step in range(30):
    a, b = plain.get_batch(step)["image"], flip.get_batch(step)["image"]
    decisions = flip.flips(step)
    np.testing.assert_array_equal(b[decisions], a[decisions][:, :, ::-1])
    np.testing.assert_array_equal(b[~decisions], a[~decisions])
    n_flipped += decisions.sum()
  # Flip decisions are a pure function of (seed, step), independent of the process layout.
  np.testing.assert_array_equal(
    flip.flips(11), _loader(src, 8, random_flip=True, process_index=1, process_count=2).flips(11)
  )
  assert 0.35 < n_flipped / (30 * 8) < 0.65


def test_loader_keep_remainder_masks_fill_ins():
  src = _IndexSource(10)
  loader = _loader(src, 4, drop_remainder=False)
  assert loader.steps_per_epoch == 3
  seen = []
  for step in range(3):
    batch = loader.get_batch(step)
    seen.extend(_index_of(batch["image"])[batch["mask"]].tolist())
  assert sorted(seen) == list(range(10))
  last = loader.get_batch(2)
  np.testing.assert_array_equal(last["mask"], [True, True, False, False])
  np.testing.assert_array_equal(loader.global_indices(2)[0][2:], loader.epoch_order(0)[:2])


def test_loader_iterate_resumes_and_prefetches_to_device():
  src = _IndexSource(30)
  loader = _loader(src, 6, random_flip=True)
  got = list(loader.iterate(start_step=7, num_steps=4))
  assert len(got) == 4
  for k, batch in enumerate(got):
    np.testing.assert_array_equal(batch["image"], loader.get_batch(7 + k)["image"])
  # Closing an endless iterator early stops its thread.
  it = loader.iterate(2)
  next(it)
  it.close()
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  on_device = list(prefetch_to_device(loader.iterate(0, 3), sharding, size=2))
  assert len(on_device) == 3
  for step, batch in enumerate(on_device):
    assert isinstance(batch["image"], jax.Array) and batch["image"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(batch["image"]), loader.get_batch(step)["image"])
    np.testing.assert_array_equal(np.asarray(batch["label"]), loader.get_batch(step)["label"])
  loader.close()


def test_loader_iterate_propagates_source_errors():
  class Broken(_IndexSource):
    def __getitem__(self, i):
      if i == 3:
        raise OSError("corrupt file #3")
      return super().__getitem__(i)

  loader = _loader(Broken(8), 8, shuffle=False)
  with pytest.raises(OSError, match="corrupt file #3"):
    list(loader.iterate(0, 2))


def test_loader_errors():
  src = _IndexSource(20)
  with pytest.raises(ValueError, match=r"config\.training\.batch_size = 6.*divisible.*\(4\)"):
    ImageLoader(src, 6, 0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match=r"config\.training\.batch_size = 32 exceeds the data set size \(20\)"):
    ImageLoader(src, 32, 0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="process_index 2 is not below process_count 2"):
    ImageLoader(src, 4, 0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="seed"):
    ImageLoader(src, 4, -1, process_index=0, process_count=1)


# ------------------------------------------------------------------------------------------------------------
# scikit-learn digits.
# ------------------------------------------------------------------------------------------------------------


def test_digits_split_values_and_sizes():
  from sklearn.datasets import load_digits

  d = load_digits()
  counts = np.bincount(d.target)
  train_idx = digits_lib.digits_split_indices("train")
  test_idx = digits_lib.digits_split_indices("test")
  # Fixed stratified split: floor(n_c / 5) test examples per class, disjoint, covering all 1,797.
  np.testing.assert_array_equal(np.bincount(d.target[test_idx], minlength=10), counts // 5)
  assert len(test_idx) == (counts // 5).sum() and len(train_idx) == len(d.target) - len(test_idx)
  np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(len(d.target)))
  for split, idx in (("train", train_idx), ("test", test_idx)):
    src = digits_lib.digits_source(split)
    assert len(src) == len(idx)
    assert src.images.shape == (len(idx), 8, 8, 1) and src.images.dtype == np.uint8
    np.testing.assert_array_equal(src.images[..., 0], np.rint(d.images[idx] * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(src.labels, d.target[idx])
    assert src[5]["label"] == d.target[idx[5]]
  # train = fit + val, disjoint, both stratified; val never holds a test image
  fit_idx, val_idx = digits_lib.digits_split_indices("fit"), digits_lib.digits_split_indices("val")
  np.testing.assert_array_equal(np.sort(np.concatenate([fit_idx, val_idx])), train_idx)
  assert len(np.intersect1d(val_idx, test_idx)) == 0 and (len(fit_idx), len(val_idx)) == (1261, 181)
  assert np.bincount(d.target[val_idx], minlength=10).min() >= 17
  levels = np.unique(digits_lib.digits_source("train").images)
  assert levels[0] == 0 and levels[-1] == 255 and len(levels) == 17
  # 16x16: zero padding keeps the native 8x8 in the centre; nearest repeats each pixel 2x2.
  native = digits_lib.digits_source("test").images
  padded = digits_lib.digits_source("test", 16).images
  assert padded.shape == (len(test_idx), 16, 16, 1)
  np.testing.assert_array_equal(padded[:, 4:12, 4:12], native)
  assert padded.sum() == native.sum()
  nearest = digits_lib.digits_source("test", 16, resize="nearest").images
  np.testing.assert_array_equal(nearest[:, ::2, ::2], native)
  np.testing.assert_array_equal(nearest[:, 1::2, 1::2], native)
  # Through the loader: [-1, 1], background -> -1.
  batch = ImageLoader(
    digits_lib.digits_source("train"), 32, 0, process_index=0, process_count=1, num_workers=1
  ).get_batch(0)
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].min() == -1 and batch["image"].max() <= 1


def test_digits_errors():
  with pytest.raises(ValueError, match=r"split \(config\.data\.split\) must be one of"):
    digits_lib.digits_source("validation")
  with pytest.raises(ValueError, match=">= 8"):
    digits_lib.digits_source("train", 4)
  with pytest.raises(ValueError, match="even"):
    digits_lib.digits_source("train", 11)
  with pytest.raises(ValueError, match="multiple of 8"):
    digits_lib.digits_source("train", 12, resize="nearest")
