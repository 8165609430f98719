"""ms/image of the feature extraction (``dxmi_jax.proj.anomaly.extract``) on this machine's CPU cores.

    taskset -c 0 python benchmarks/feature_extraction.py --image_sizes=112,224 --out=results/feature_extraction.json
    taskset -c 0,1 python benchmarks/feature_extraction.py --image_sizes=112,224 --out=results/feature_extraction.json

Times the production path (:func:`extract.extract_features`: preprocessing, the backbone up to its
deepest requested stage, the UniAD neck, the float16 cast) on real Fashion-MNIST test images, one
untimed warm-up batch then ``--batches`` timed ones, with as many torch threads as the process may
use cores (pin it with taskset). Each run adds or replaces its rows (keyed by backbone, image
size and cores) in the ``timings`` list of ``--out``, keeping the file's other keys.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dxmi_jax.proj.anomaly import extract  # noqa: E402


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--backbone", default="efficientnet_lite0")
  parser.add_argument("--stages", default="2,4,8,16")
  parser.add_argument("--image_sizes", default="112,224")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--batches", type=int, default=3)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  cores = sorted(os.sched_getaffinity(0))
  strides = [int(s) for s in args.stages.split(",")]
  source, data_dir = extract.resolve_source("auto", None)
  images, _ = extract.load_split(source, data_dir, "test")
  rows = []
  for size in [int(s) for s in args.image_sizes.split(",")]:
    backbone = extract.build_backbone(args.backbone, size, strides, pretrained=True, threads=len(cores))
    n = args.batch_size * args.batches
    extract.extract_features(backbone, images[: args.batch_size], size, strides[-1], args.batch_size)  # warm-up
    t0 = time.perf_counter()
    feats = extract.extract_features(
      backbone, images[args.batch_size : args.batch_size + n], size, strides[-1], args.batch_size
    )
    seconds = time.perf_counter() - t0
    row = dict(
      backbone=backbone.name,
      image_size=size,
      cores=len(cores),
      torch_threads=len(cores),
      ms_per_image=round(1000 * seconds / n, 2),
      images_timed=n,
      batch_size=args.batch_size,
      stages=list(backbone.strides),
      channels=list(backbone.channels),
      total_channels=int(sum(backbone.channels)),
      grid=list(feats.shape[-2:]),
      load_average_1min=round(os.getloadavg()[0], 2),
    )
    print(json.dumps(row))
    rows.append(row)
  if args.out:
    data = {}
    if os.path.exists(args.out):
      with open(args.out) as f:
        data = json.load(f)
    keys = {(r["backbone"], r["image_size"], r["cores"]) for r in rows}
    old = [r for r in data.get("timings", []) if (r["backbone"], r["image_size"], r["cores"]) not in keys]
    data["machine"] = f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
    data.setdefault("timing_commands", [])
    command = f"taskset -c {','.join(map(str, cores))} python " + " ".join(sys.argv)
    if command not in data["timing_commands"]:
      data["timing_commands"].append(command)
    data["timings"] = sorted(old + rows, key=lambda r: (r["backbone"], r["image_size"], r["cores"]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(data, f, indent=1)
      f.write("\n")


if __name__ == "__main__":
  main()
