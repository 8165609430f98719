"""Random-access image sources: TFDS (CIFAR-10, ImageNet-64), image folders (ImageNet train, LSUN), arrays.

A *source* is anything with ``__len__`` and ``__getitem__(i)`` returning ``{"image": uint8 HWC array,
"label": int}``; ``label`` is -1 (or absent) for unconditional data. Sources do no batching, shuffling,
flipping or scaling to [-1, 1]: that is `dxmi_jax.data.loader.ImageLoader`'s job, so that a batch is a pure
function of (seed, step) whatever the source.

Which source reproduces which official data pipeline (reference §5, data row):

* CIFAR-10: ``tfds_source("cifar10", "train")`` holds the same 50,000 training images as torchvision's CIFAR-10
  (the official code adds RandomHorizontalFlip and maps [0, 1] to [-1, 1]; the loader does both).
* ImageNet-64: the official code reads the ILSVRC train *folders* with guided-diffusion's ``center_crop_arr``
  (`adm_center_crop` below): ``folder_source(root, 64, "adm_center_crop", class_cond=True)``. This is the
  preprocessing the EDM checkpoint was trained with. ``tfds_source("imagenet_resized/64x64", ...)`` is a
  convenient but *different* data set: Chrabaszcz et al.'s box-resized images, squashed to 64x64 without
  cropping. Its labels are remapped to the sorted-synset order of the official loader (see `tfds_source`).
* LSUN bedroom: ``folder_source(root, 256)``, unconditional, ADM center crop as in the official code. The
  official folder (``datasets/lsun_bedroom_train``) presumably holds 256x256 images exported with
  guided-diffusion's LSUN script (the consistency-models protocol; `box_center_crop`) [inferred], on which
  ADM's center crop is the identity; on raw LSUN images pass ``preprocessing="center_crop"`` to apply that
  export step on the fly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

# File types the official listing (`_list_image_files_recursively`) accepts, compared case-insensitively.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif")
PREPROCESSINGS = ("adm_center_crop", "center_crop", "resize")

_FOLDER_LAYOUT = (
  "Expected layout: an ImageNet train folder root/<synset>/<synset>_<n>.JPEG "
  "(e.g. root/n01440764/n01440764_10026.JPEG; class_cond=True takes the label from the file-name prefix), "
  "or, for LSUN and other unconditional data, a flat or nested folder of ."
  + "/.".join(IMAGE_EXTENSIONS)
  + " files (extensions are matched case-insensitively)."
)


@runtime_checkable
class ImageSource(Protocol):
  """What `ImageLoader` reads: random access to uint8 HWC images and integer labels."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


def _check_image_size(image_size: Any, option: str) -> int:
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f"{option} must be a positive integer, got {image_size!r}")
  return int(image_size)


# ----------------------------------------------------------------------------------------------------------
# Preprocessing (PIL image in, uint8 HWC array out).
# ----------------------------------------------------------------------------------------------------------


def _crop_center(arr: np.ndarray, image_size: int) -> np.ndarray:
  top = (arr.shape[0] - image_size) // 2
  left = (arr.shape[1] - image_size) // 2
  return arr[top : top + image_size, left : left + image_size]


def adm_center_crop(image: Image.Image, image_size: int) -> np.ndarray:
  """ADM / guided-diffusion ``center_crop_arr``, the official ImageNet-64 (and LSUN) preprocessing.

  Exactly these steps, on the PIL image as decoded (sizes are (width, height)):

  1. While ``min(width, height) >= 2 * image_size``: resize to ``(width // 2, height // 2)`` with
     ``Image.BOX`` (for an even size each pass averages 2x2 blocks; for an odd size the box is
     ``size / (size // 2)`` pixels wide, so no row or column is dropped).
  2. ``scale = image_size / min(width, height)``; resize to ``(round(width * scale), round(height * scale))``
     with ``Image.BICUBIC``. ``round`` is Python's (round half to even); the short side becomes exactly
     ``image_size``. When the size is unchanged Pillow returns an identical copy.
  3. Crop ``image_size x image_size`` at offsets ``((height - image_size) // 2, (width - image_size) // 2)``,
     i.e. the extra pixel of an odd margin goes to the bottom/right.

  Args:
    image: a PIL image, already converted to the wanted mode (RGB for colour data).
    image_size: output height and width.

  Returns:
    uint8 array of shape (image_size, image_size, C) (C = 3 for RGB; a 2-D "L" image gives (H, W)).
  """
  while min(image.size) >= 2 * image_size:
    image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
  scale = image_size / min(image.size)
  image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
  return _crop_center(np.asarray(image), image_size)


def box_center_crop(image: Image.Image, image_size: int) -> np.ndarray:
  """Guided-diffusion's LSUN export (``datasets/lsun_bedroom.py``), which produced the 256x256 LSUN images.

  One ``Image.BOX`` resize to ``(int(round(scale * width)), int(round(scale * height)))`` with
  ``scale = image_size / min(width, height)``, then the same center crop as `adm_center_crop`. Use it on raw
  LSUN images; on images that are already ``image_size`` square every preprocessing is the identity.
  """
  scale = image_size / min(image.size)
  image = image.resize(tuple(int(round(scale * s)) for s in image.size), resample=Image.BOX)
  return _crop_center(np.asarray(image), image_size)


def plain_resize(image: Image.Image, image_size: int) -> np.ndarray:
  """Resize to ``image_size x image_size`` with ``Image.BICUBIC``, ignoring the aspect ratio (no crop)."""
  if image.size != (image_size, image_size):
    image = image.resize((image_size, image_size), resample=Image.BICUBIC)
  return np.asarray(image)


_PREPROCESS_FNS = {
  "adm_center_crop": adm_center_crop,
  "center_crop": box_center_crop,
  "resize": plain_resize,
}


def preprocess(image: Image.Image, image_size: int, preprocessing: str = "adm_center_crop") -> np.ndarray:
  """Applies one of `PREPROCESSINGS` and returns a uint8 HWC array (a channel axis is added to 2-D output)."""
  try:
    fn = _PREPROCESS_FNS[preprocessing]
  except KeyError:
    raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}") from None
  arr = np.asarray(fn(image, image_size), dtype=np.uint8)
  if arr.ndim == 2:
    arr = arr[:, :, None]
  return np.ascontiguousarray(arr)


def load_rgb(path: str | os.PathLike) -> Image.Image:
  """Decodes an image file fully and converts it to RGB, as the official ``ImageDataset`` does.

  ``convert("RGB")`` drops an alpha channel without compositing and expands grey-scale/palette/CMYK images.
  Pillow releases the GIL while decoding, so this parallelises across threads.
  """
  with Image.open(path) as image:
    image.load()
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------------------------
# In-memory arrays.
# ----------------------------------------------------------------------------------------------------------


class ArraySource:
  """A source over in-memory uint8 NHWC images and optional integer labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray | None = None):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f"ArraySource expects uint8 images of shape (N, H, W, C), got {images.dtype} {images.shape}")
    if labels is not None:
      labels = np.asarray(labels)
      if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
          f"ArraySource labels must be integers of shape ({images.shape[0]},), got {labels.dtype} {labels.shape}"
        )
    self.images = images
    self.labels = labels

  def __len__(self) -> int:
    return self.images.shape[0]

  def __getitem__(self, index: int) -> dict[str, Any]:
    label = -1 if self.labels is None else int(self.labels[index])
    return {"image": self.images[index], "label": label}


# ----------------------------------------------------------------------------------------------------------
# Image folders (ImageNet train, LSUN).
# ----------------------------------------------------------------------------------------------------------


def list_image_files(root: str | os.PathLike) -> list[str]:
  """All image files below ``root``, in the official order.

  Like guided-diffusion's ``_list_image_files_recursively``: entries of each directory are visited in sorted
  (byte-wise string) order, depth first; an entry whose name contains a dot and whose extension is one of
  `IMAGE_EXTENSIONS` (case-insensitive) is an image, otherwise a directory is descended into.
  """
  results = []
  for entry in sorted(os.listdir(root)):
    path = os.path.join(root, entry)
    if "." in entry and entry.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
      results.append(path)
    elif os.path.isdir(path):
      results.extend(list_image_files(path))
  return results


class FolderSource:
  """Images decoded from files with Pillow and preprocessed on every access (nothing is cached).

  Attributes:
    files: image paths in `list_image_files` order (index i of the source is files[i]).
    labels: int array of per-file labels, or None when unconditional.
    classes: sorted class names (label k is classes[k]), or None.
  """

  def __init__(
    self,
    files: Sequence[str],
    image_size: int,
    preprocessing: str,
    labels: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
  ):
    if preprocessing not in PREPROCESSINGS:
      raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    self.files = list(files)
    self.image_size = image_size
    self.preprocessing = preprocessing
    self.labels = labels
    self.classes = None if classes is None else list(classes)

  @property
  def num_classes(self) -> int:
    return 0 if self.classes is None else len(self.classes)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = self.files[index]
    try:
      image = load_rgb(path)
    except Exception as e:  # pylint: disable=broad-except
      raise OSError(f"could not decode image file {path}: {e}") from e
    arr = preprocess(image, self.image_size, self.preprocessing)
    label = -1 if self.labels is None else int(self.labels[index])
    return {"image": arr, "label": label}


def folder_source(
  root: str | os.PathLike,
  image_size: int,
  preprocessing: str = "adm_center_crop",
  class_cond: bool = False,
  *,
  label_from: str = "filename",
) -> FolderSource:
  """A source over a folder of images: the ImageNet train folders (ADM preprocessing) or LSUN.

  Labels (``class_cond=True``), as the official loader (``models/cm/dxmi_util.load_data``) derives them:
  with ``label_from="filename"`` (default) the class name of a file is the part of its base name before the
  first "_" (``n01440764_10026.JPEG`` -> ``n01440764``) and the label is the index of that name in the sorted
  set of class names present. On the ILSVRC train layout this equals the index of the synset directory in the
  sorted list of synset directory names (0..999, the order the class-conditional EDM checkpoint uses).
  ``label_from="directory"`` uses the name of the file's parent directory instead (for layouts whose file
  names carry no synset prefix). Unconditional sources return label -1.

  The file list is built once here (one ``os.listdir`` per directory, ~1.3M files for ImageNet); each
  ``__getitem__`` decodes one file with Pillow and applies ``preprocessing``:
  "adm_center_crop" (`adm_center_crop`, official), "center_crop" (`box_center_crop`, the LSUN export recipe),
  or "resize" (`plain_resize`).

  Args:
    root: the folder (``config.data.path``).
    image_size: output height and width (``config.data.image_size``).
    preprocessing: one of `PREPROCESSINGS`.
    class_cond: return class labels (ImageNet) instead of -1 (LSUN).
    label_from: "filename" (official) or "directory".

  Raises:
    FileNotFoundError: the folder does not exist or holds no image files (the message shows the layout).
    ValueError: bad options, or class_cond with file names lacking the "<class>_" prefix.
  """
  image_size = _check_image_size(image_size, "image_size (config.data.image_size)")
  if preprocessing not in PREPROCESSINGS:
    raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
  if label_from not in ("filename", "directory"):
    raise ValueError(f"label_from must be 'filename' or 'directory', got {label_from!r}")
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise FileNotFoundError(
      f"image folder {root!r} (config.data.path) does not exist or is not a directory. {_FOLDER_LAYOUT}"
    )
  files = list_image_files(root)
  if not files:
    raise FileNotFoundError(f"image folder {root!r} (config.data.path) contains no image files. {_FOLDER_LAYOUT}")
  labels = classes = None
  if class_cond:
    if label_from == "filename":
      names = [os.path.basename(f).split("_")[0] for f in files]
      bad = [f for f in files if "_" not in os.path.basename(f)]
      if bad:
        raise ValueError(
          f"class_cond=True takes each label from the file-name prefix before '_', but "
          f"{len(bad)} file(s) have no '_' (e.g. {bad[0]!r}). {_FOLDER_LAYOUT} Use "
          f"label_from='directory' to take labels from the parent folder names instead."
        )
    else:
      names = [os.path.basename(os.path.dirname(f)) for f in files]
      top = [f for f in files if os.path.dirname(f) == root]
      if top:
        raise ValueError(
          f"label_from='directory' needs every image inside a class folder, but "
          f"{len(top)} file(s) lie directly in {root!r} (e.g. {top[0]!r}). {_FOLDER_LAYOUT}"
        )
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
  return FolderSource(files, image_size, preprocessing, labels=labels, classes=classes)


# ----------------------------------------------------------------------------------------------------------
# TFDS (random access through `tfds.data_source`; TensorFlow is not needed to read).
# ----------------------------------------------------------------------------------------------------------


def _prepare_hint(name: str, data_dir: str) -> str:
  build = f"tfds build {name} --data_dir={data_dir} --file_format=array_record"
  hint = (
    f"Prepare it once with `{build}` (building needs TensorFlow, e.g. `pip install tensorflow-cpu` in "
    f"any environment; reading it back here does not), then point config.data.tfds_data_dir at "
    f"{data_dir!r}."
  )
  if name.startswith("imagenet_resized"):
    hint += (
      " imagenet_resized downloads Chrabaszcz et al.'s Imagenet64_train_part{1,2}_npz.zip and "
      "Imagenet64_val_npz.zip from https://image-net.org/data/downsample/, which needs an ImageNet "
      "account: if the download is refused, log in to image-net.org, download those files by hand "
      "and put them in <data_dir>/downloads/manual/ or pass them with --manual_dir. Note that these "
      "are box-resized, uncropped images; the official DxMI ImageNet-64 data is the ILSVRC train "
      "folder with ADM center cropping (folder_source, config.data.path)."
    )
  return hint


class TfdsSource:
  """Wraps a TFDS random-access data source: uint8 HWC images, int labels (remapped when `label_map` is set).

  Attributes:
    name: the TFDS name.
    label_map: int array mapping TFDS labels to returned labels, or None.
    num_classes: number of classes (0 without labels).
  """

  def __init__(
    self,
    data_source: Any,
    name: str,
    image_size: int | None = None,
    label_map: np.ndarray | None = None,
    num_classes: int = 0,
  ):
    self.data_source = data_source
    self.name = name
    self.image_size = image_size
    self.label_map = label_map
    self.num_classes = num_classes

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self.data_source[int(index)]
    image = np.asarray(example["image"], dtype=np.uint8)
    if image.ndim == 2:
      image = image[:, :, None]
    if self.image_size is not None and image.shape[:2] != (self.image_size, self.image_size):
      pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
      image = preprocess(pil, self.image_size, "adm_center_crop")
    label = int(example["label"]) if "label" in example else -1
    if self.label_map is not None and label >= 0:
      label = int(self.label_map[label])
    return {"image": image, "label": label}


def tfds_source(
  name: str, split: str, data_dir: str | None = None, image_size: int | None = None, *, synset_order_labels: bool = True
) -> TfdsSource:
  """A random-access source over an *already prepared* TFDS data set (no download, no TensorFlow).

  Reads through ``tfds.data_source``, which needs the array_record (or parquet) file format. Images come back
  as stored; when ``image_size`` is given and differs from the stored size they go through `adm_center_crop`
  (for square images that is only the BOX halving + BICUBIC resize).

  ``imagenet_resized/*`` stores labels in Chrabaszcz et al.'s ``map_clsloc.txt`` order, which is *not* the
  sorted-synset order of the official ImageNet loader and of the class-conditional EDM checkpoint. With
  ``synset_order_labels=True`` (default) each label is remapped to the index of its synset (the TFDS class
  name, e.g. ``n02119789``) in the sorted list of the 1000 synsets. Other data sets keep their labels.

  Args:
    name: TFDS name, e.g. "cifar10" or "imagenet_resized/64x64".
    split: TFDS split, e.g. "train" or "validation".
    data_dir: the TFDS data directory (``config.data.tfds_data_dir``); None or "" uses TFDS's default
      (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    image_size: output height and width, or None to keep the stored size.
    synset_order_labels: remap ``imagenet_resized`` labels to sorted-synset order (see above).

  Raises:
    FileNotFoundError: the data set is not prepared under ``data_dir`` (the message says how to prepare it).
    ValueError: unknown data set name, split, or a data set prepared in a non-random-access file format.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      "tfds_source needs tensorflow-datasets (`pip install tensorflow-datasets`); "
      "TensorFlow itself is not needed to read prepared data"
    ) from e
  if image_size is not None:
    image_size = _check_image_size(image_size, "image_size (config.data.image_size)")
  data_dir = data_dir or None  # config.data.tfds_data_dir = "" means the TFDS default
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"unknown TFDS data set {name!r}: {str(e).splitlines()[0]}") from None
  try:
    data_source = builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    root = str(builder.data_dir_root) if hasattr(builder, "data_dir_root") else str(data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
        f"TFDS data set {name!r} is not prepared under {root!r} (looked for {builder.data_dir}). "
        + _prepare_hint(name, root)
      ) from e
    fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
    if fmt not in ("array_record", "parquet"):
      raise ValueError(
        f"TFDS data set {name!r} at {builder.data_dir} was prepared in the {fmt!r} file format, which has no "
        f"random access. Convert it in place with `tfds convert_format --dataset_version_dir="
        f"{builder.data_dir} --out_file_format=array_record` (needs TensorFlow), or rebuild it: "
        + _prepare_hint(name, root)
      ) from e
    available = sorted(builder.info.splits.keys())
    raise ValueError(
      f"could not open split {split!r} of TFDS data set {name!r} at {builder.data_dir} "
      f"(available splits: {available}): {e}"
    ) from e
  label_map = None
  num_classes = 0
  features = builder.info.features
  if "label" in features and hasattr(features["label"], "names"):
    names = list(features["label"].names)
    num_classes = len(names)
    if synset_order_labels and name.split("/")[0] == "imagenet_resized":
      rank = {synset: i for i, synset in enumerate(sorted(names))}
      label_map = np.array([rank[n] for n in names], dtype=np.int64)
  return TfdsSource(data_source, name, image_size=image_size, label_map=label_map, num_classes=num_classes)
