"""Sample evaluation: FID, improved precision/recall and Inception score.

Usage::

  # metrics of a samples npz (arr_0: uint8 NHWC) against a reference npz
  python -m dxmi_jax.metrics SAMPLES.npz REFERENCE.npz \
      [--inception_weights=pt_inception-2015-12-05-6726825d.pth] [--batch_size=200]

  # cache reference statistics of a dataset split / image folder / npz
  python -m dxmi_jax.metrics stats --tfds=cifar10:train --out=cifar10_train_ref.npz
  python -m dxmi_jax.metrics stats --folder=DIR --out=ref.npz
  python -m dxmi_jax.metrics stats --npz=images.npz --out=ref.npz

Protocol.  Features come from the pytorch-fid port of the FID Inception
(pool3, 2048-d, bilinear resize to 299, inputs uint8/255), which is what DxMI
uses for *training-time* model selection (reference §2h).  The paper's numbers
come from OpenAI's TF evaluator (the ``classify_image_graph_def.pb`` graph);
the port matches that graph closely but not exactly, so FIDs differ slightly.
The output says so.  OpenAI's ``VIRTUAL_*.npz`` references store mu/sigma from
the TF graph; those are used as they are (as the official ImageNet training
does) unless ``--recompute_reference_stats`` recomputes them from ``arr_0``.
Precision/recall (k=3) uses the reference's stored ``features`` or the pool3
features of its ``arr_0`` images, reference first (§7.2).  The FID of fewer
than 50,000 samples is reported as ``fid_proxy_<n>``.

Bad input (missing files, empty npz, wrong dtype/shape, reference without
statistics or images, NaN features, missing weights) ends with one line
``error: ...`` on stderr and exit status 1; no statistics file is written.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from dxmi_jax import image_export, io
from dxmi_jax.errors import CheckpointError
from dxmi_jax.metrics import features as features_lib
from dxmi_jax.metrics import fid as fid_lib
from dxmi_jax.metrics import inception_score as is_lib
from dxmi_jax.metrics import precision_recall as pr_lib
from dxmi_jax.models import inception

IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
PORT_NOTE = (
  "pytorch-fid FID-Inception port in JAX; it differs slightly from OpenAI's TF "
  "evaluator (classify_image_graph_def.pb) used for the paper's numbers"
)


# --------------------------------------------------------------------------------------
# Image sources: all yield uint8 NHWC batches of equal image size.
# --------------------------------------------------------------------------------------


def load_samples_npz(path: str) -> np.ndarray:
  """``arr_0`` of a samples file, validated as non-empty uint8 NHWC RGB."""
  if not os.path.isfile(path):
    raise features_lib.EvaluationInputError(f"samples file not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as z:
      if not z.files:
        raise features_lib.EvaluationInputError(f"samples file {path} is an empty npz (no arrays)")
      if "arr_0" not in z.files:
        raise features_lib.EvaluationInputError(
          f"samples file {path} has no 'arr_0' (uint8 NHWC images); found {z.files}"
        )
      images = z["arr_0"]
  except (OSError, ValueError) as e:
    if isinstance(e, features_lib.EvaluationInputError):
      raise
    raise features_lib.EvaluationInputError(f"samples file {path} is not a readable npz: {e}") from e
  return features_lib.validate_images(images, f"{path}:arr_0")


def _batched(arr: np.ndarray, size: int) -> Iterator[np.ndarray]:
  for i in range(0, arr.shape[0], size):
    yield arr[i : i + size]


def folder_images(folder: str, batch_size: int, max_images: Optional[int] = None) -> Iterator[np.ndarray]:
  """Images of a folder (sorted names, RGB via Pillow), all of one size."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  if not os.path.isdir(folder):
    raise features_lib.EvaluationInputError(f"--folder: {folder} is not a directory")
  files = sorted(f for f in glob.glob(os.path.join(folder, "*")) if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise features_lib.EvaluationInputError(f"--folder: no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
  files = files[:max_images] if max_images else files
  size = None
  for i in range(0, len(files), batch_size):
    batch = []
    for f in files[i : i + batch_size]:
      try:
        with Image.open(f) as im:
          a = np.asarray(im.convert("RGB"), dtype=np.uint8)
      except OSError as e:
        raise features_lib.EvaluationInputError(f"--folder: cannot read image {f}: {e}") from e
      if size is None:
        size = a.shape
      elif a.shape != size:
        raise features_lib.EvaluationInputError(
          f"--folder: {f} is {a.shape[1]}x{a.shape[0]} but earlier images are "
          f"{size[1]}x{size[0]}; all images must have the same size"
        )
      batch.append(a)
    yield np.stack(batch)


_TFDS_SPEC = re.compile(r"^(?P<name>[^:\s]+?(?::\d+\.\d+\.\d+)?):(?P<split>.+)$")


def tfds_images(
  spec: str, batch_size: int, data_dir: Optional[str] = None, max_images: Optional[int] = None
) -> Iterator[np.ndarray]:
  """Images of a TFDS split, ``NAME[:VERSION]:SPLIT``, through ``tfds.data_source``."""
  m = _TFDS_SPEC.match(spec)
  if not m:
    raise features_lib.EvaluationInputError(f"--tfds={spec!r}: expected NAME:SPLIT, e.g. cifar10:train")
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  try:
    ds = tfds.data_source(m["name"], split=m["split"], data_dir=data_dir)
  except Exception as e:  # tfds raises many kinds; report them as one input error
    raise features_lib.EvaluationInputError(
      f"--tfds={spec}: cannot open the split with tfds.data_source (data_dir={data_dir}): {type(e).__name__}: {e}"
    ) from e
  n = len(ds)
  if max_images:
    n = min(n, max_images)
  if n == 0:
    raise features_lib.EvaluationInputError(f"--tfds={spec}: the split is empty")
  size = None
  for i in range(0, n, batch_size):
    idx = list(range(i, min(i + batch_size, n)))
    records = ds.__getitems__(idx) if hasattr(ds, "__getitems__") else [ds[j] for j in idx]
    batch = []
    for j, rec in zip(idx, records):
      if "image" not in rec:
        raise features_lib.EvaluationInputError(f"--tfds={spec}: records have no 'image' feature (keys {sorted(rec)})")
      a = np.asarray(rec["image"])
      if a.ndim == 3 and a.shape[-1] == 1:  # grayscale -> RGB, like PIL's convert("RGB")
        a = np.repeat(a, 3, axis=-1)
      if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
        raise features_lib.EvaluationInputError(
          f"--tfds={spec}: record {j} image is {a.dtype} {a.shape}, expected uint8 HxWx3"
        )
      if size is None:
        size = a.shape
      elif a.shape != size:
        raise features_lib.EvaluationInputError(
          f"--tfds={spec}: record {j} is {a.shape} but earlier images are {size}; all images must have the same size"
        )
      batch.append(a)
    yield np.stack(batch)


# --------------------------------------------------------------------------------------
# Library API.
# --------------------------------------------------------------------------------------


def compute_reference(
  batches,
  extractor: features_lib.InceptionFeatureExtractor,
  source: str,
  pr_features: int = 10_000,
  name: str = "reference images",
) -> fid_lib.ReferenceStatistics:
  """Streams image batches into mu/sigma and keeps the first ``pr_features`` pool3 rows."""
  stats = features_lib.RunningStatistics()
  kept: List[np.ndarray] = []
  have = 0
  for pool3, _ in extractor.iter_features(batches, name):
    stats.update(pool3)
    if have < pr_features:
      kept.append(pool3[: pr_features - have])
      have += kept[-1].shape[0]
  if stats.n < 2:
    raise features_lib.EvaluationInputError(f"{source}: reference statistics need at least 2 images, got {stats.n}")
  return fid_lib.ReferenceStatistics(
    mu=stats.mean,
    sigma=stats.covariance,
    n=stats.n,
    features=np.concatenate(kept) if kept else None,
    feature_extractor=extractor.name,
    source=source,
    protocol=f"mean/covariance (ddof=1, float64) of pool3 over {stats.n} images of {source}",
  )


def fid_name(n: int) -> str:
  """``fid`` only for the full 50k protocol; otherwise ``fid_proxy_<n>``."""
  return "fid" if n >= fid_lib.FULL_EVAL_SAMPLES else f"fid_proxy_{n}"


def evaluate_samples(
  sample_images: np.ndarray,
  ref: fid_lib.ReferenceStatistics,
  extractor: features_lib.InceptionFeatureExtractor,
  *,
  k: int = 3,
  is_splits: int = 10,
  pr_block_size: int = 10_000,
  distance_dtype: str = "float32",
  recompute_reference_stats: bool = False,
) -> Dict[str, Any]:
  """FID (or fid_proxy_<n>), precision, recall and IS of uint8 samples vs a reference."""
  sample_images = features_lib.validate_images(sample_images, "samples")
  if recompute_reference_stats and ref.images is None:
    raise fid_lib.ReferenceFileError("--recompute_reference_stats needs reference images (arr_0) in the reference file")
  stats = features_lib.RunningStatistics()
  pools, logits = [], []
  for p, l in extractor.iter_features([sample_images], "samples"):
    stats.update(p)
    pools.append(p)
    logits.append(l)
  sample_pool = np.concatenate(pools)
  notes = []
  ref_pool = ref.features
  if ref.images is not None and (ref_pool is None or recompute_reference_stats):
    ref_pool = extractor.features(ref.images, "reference arr_0")["pool3"]
  if ref.has_statistics and not recompute_reference_stats:
    mu2, sigma2, n_ref = ref.mu, ref.sigma, ref.n
    ref_extractor = ref.feature_extractor
  else:
    if ref_pool is None:
      raise fid_lib.ReferenceFileError("the reference has neither mu/sigma nor images/features")
    rs = features_lib.RunningStatistics().update(ref_pool)
    mu2, sigma2, n_ref = rs.mean, rs.covariance, rs.n
    ref_extractor = extractor.name
  if ref_extractor != extractor.name:
    notes.append(
      f"reference mu/sigma come from a different feature extractor ({ref_extractor}); "
      f"the FID mixes it with the port's sample features"
    )
  result: Dict[str, Any] = {
    "n_samples": stats.n,
    "n_reference_stats": n_ref,
    "protocol": PORT_NOTE,
    "feature_extractor": extractor.name,
    "reference_feature_extractor": ref_extractor,
  }
  result[fid_name(stats.n)] = fid_lib.frechet_distance(stats.mean, stats.covariance, mu2, sigma2)
  if ref_pool is not None:
    pr = pr_lib.precision_recall(ref_pool, sample_pool, k=k, block_size=pr_block_size, distance_dtype=distance_dtype)
    result.update(pr)
    result["n_reference_pr"] = int(ref_pool.shape[0])
  else:
    notes.append("precision/recall skipped: the reference has neither 'features' nor 'arr_0'")
  result["inception_score"], result["inception_score_std"] = is_lib.inception_score(
    np.concatenate(logits), num_splits=is_splits
  )
  result["is_splits"] = is_splits
  result["notes"] = notes
  return result


# --------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--inception_weights",
    default=None,
    help=f"pytorch-fid weights (.pth, or .npz with the same keys); default ${inception.WEIGHTS_ENV_VAR}",
  )
  p.add_argument("--batch_size", type=int, default=200, help="global feature-extraction batch (split over all devices)")


def _eval_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m dxmi_jax.metrics",
    description="FID / precision / recall / IS of SAMPLES.npz against REFERENCE.npz "
    "(or: python -m dxmi_jax.metrics stats --help).",
  )
  p.add_argument("samples", help="npz with arr_0 = uint8 NHWC samples")
  p.add_argument("reference", help="OpenAI VIRTUAL_*.npz or a stats file from the 'stats' command")
  _common(p)
  p.add_argument("--k", type=int, default=3, help="k of the k-NN balls for precision/recall")
  p.add_argument("--is_splits", type=int, default=10, help="Inception-score splits")
  p.add_argument("--pr_block_size", type=int, default=10_000)
  p.add_argument(
    "--distance_dtype",
    choices=("float32", "float16"),
    default="float32",
    help="float16 mimics OpenAI's fp16 distance blocks (with fp32 fallback)",
  )
  p.add_argument(
    "--recompute_reference_stats",
    action="store_true",
    help="compute the reference mu/sigma from its arr_0 with the port instead of "
    "using the stored (possibly TF-graph) mu/sigma",
  )
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p


def _stats_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m dxmi_jax.metrics stats",
    description="Compute and cache reference statistics (mu, sigma, P/R features).",
  )
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--tfds", help="NAME:SPLIT read with tfds.data_source, e.g. cifar10:train")
  src.add_argument("--folder", help="folder of images (png/jpg/...), all the same size")
  src.add_argument("--npz", help="npz whose arr_0 holds uint8 NHWC images")
  p.add_argument("--out", required=True, help="output .npz (written atomically)")
  p.add_argument("--data_dir", default=None, help="tfds data_dir")
  p.add_argument("--max_images", type=int, default=None, help="use only the first N images")
  p.add_argument(
    "--pr_features",
    type=int,
    default=10_000,
    help="store pool3 features of the first N images for precision/recall (0: none)",
  )
  _common(p)
  return p


def _print_results(res: Dict[str, Any], samples_path: str, ref_path: str) -> None:
  print(f"protocol: {res['protocol']}")
  print(f"samples: {samples_path} ({res['n_samples']} images)")
  n_pr = res.get("n_reference_pr")
  n_ref = res["n_reference_stats"]
  print(
    f"reference: {ref_path} (mu/sigma over {n_ref if n_ref else 'an unrecorded number of'} "
    f"images from "
    f"{res['reference_feature_extractor']}"
    + (f"; precision/recall against {n_pr} reference features)" if n_pr else ")")
  )
  for note in res["notes"]:
    print(f"note: {note}")
  for key in res:
    if key == "fid" or key.startswith("fid_proxy_"):
      print(f"{key}: {res[key]:.4f}")
  if "precision" in res:
    print(f"precision: {res['precision']:.4f}")
    print(f"recall: {res['recall']:.4f}")
  print(
    f"inception_score: {res['inception_score']:.4f} +- {res['inception_score_std']:.4f} ({res['is_splits']} splits)"
  )


def _run_eval(args) -> None:
  images = load_samples_npz(args.samples)
  ref = fid_lib.load_reference(args.reference)
  if args.recompute_reference_stats and ref.images is None:
    raise fid_lib.ReferenceFileError(f"--recompute_reference_stats: {args.reference} has no reference images (arr_0)")
  extractor = features_lib.InceptionFeatureExtractor.from_weights(args.inception_weights, batch_size=args.batch_size)
  res = evaluate_samples(
    images,
    ref,
    extractor,
    k=args.k,
    is_splits=args.is_splits,
    pr_block_size=args.pr_block_size,
    distance_dtype=args.distance_dtype,
    recompute_reference_stats=args.recompute_reference_stats,
  )
  res.update(samples=os.path.abspath(args.samples), reference=os.path.abspath(args.reference))
  _print_results(res, args.samples, args.reference)
  if args.json:
    _atomic_json(args.json, res)


def _atomic_json(path: str, obj: Dict[str, Any]) -> None:
  io.atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def _run_stats(args) -> None:
  if args.max_images is not None and args.max_images < 1:
    raise features_lib.EvaluationInputError(f"--max_images must be >= 1, got {args.max_images}")
  if args.npz:
    images = load_samples_npz(args.npz)
    if args.max_images:
      images = images[: args.max_images]
    batches, source = _batched(images, args.batch_size), f"npz:{os.path.abspath(args.npz)}"
  elif args.folder:
    batches = folder_images(args.folder, args.batch_size, args.max_images)
    source = f"folder:{os.path.abspath(args.folder)}"
  else:
    batches = tfds_images(args.tfds, args.batch_size, args.data_dir, args.max_images)
    source = f"tfds:{args.tfds}"
  # Read the first batch before loading weights, so bad input fails fast.
  first = next(batches)
  extractor = features_lib.InceptionFeatureExtractor.from_weights(args.inception_weights, batch_size=args.batch_size)

  def all_batches():
    yield first
    yield from batches

  ref = compute_reference(all_batches(), extractor, source, pr_features=max(args.pr_features, 0))
  fid_lib.save_reference(args.out, ref)
  print(
    f"wrote {args.out}: mu/sigma over {ref.n} images of {source}"
    + (f", {ref.features.shape[0]} pool3 features for precision/recall" if ref.features is not None else "")
  )
  print(f"protocol: {PORT_NOTE}")


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "stats":
    args, run = _stats_parser().parse_args(argv[1:]), _run_stats
  else:
    args, run = _eval_parser().parse_args(argv), _run_eval
  try:
    run(args)
  except (
    features_lib.EvaluationInputError,
    CheckpointError,
    image_export.SampleExportError,
    ValueError,
    OSError,
    ImportError,
  ) as e:
    msg = " ".join(str(e).split())  # one line
    print(f"error: {msg}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
