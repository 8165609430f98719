"""Images/s of FID-Inception feature extraction on the current device(s).

    python benchmarks/fid_throughput.py [--num_images=2048] [--batch_size=200] \
        [--image_size=32] [--precision=highest] [--out=results]

Runs the production path (:class:`dxmi_jax.metrics.features.InceptionFeatureExtractor`:
uint8 host batches -> sharded over all devices on a 1-D "data" mesh -> resize to
299 -> Inception -> pool3 + logits back on the host).  Weights are random with
the FID layout (throughput does not depend on their values), so no weights
file is needed.  The first batch (compilation) is timed separately; the timed
part covers ``--num_images`` images including host<->device transfers.
``--out=DIR`` writes ``DIR/fid_throughput_<device>.json``.
"""

import json
import os
import platform
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from dxmi_jax.metrics import features as features_lib  # noqa: E402
from dxmi_jax.models import inception  # noqa: E402

flags.DEFINE_integer("num_images", 2048, "Timed images (after the compile batch).")
flags.DEFINE_integer("batch_size", 200, "Global batch, split over all devices.")
flags.DEFINE_integer("image_size", 32, "Input resolution (resized to 299 on device).")
flags.DEFINE_enum("precision", "highest", ["highest", "default"], "Conv/matmul precision.")
flags.DEFINE_string("out", "", "Folder for fid_throughput_<device>.json (nothing written if empty).")
FLAGS = flags.FLAGS


def random_variables(seed: int = 0):
  """He-normal convs, identity BatchNorm, small fc: finite activations of realistic size."""
  rng = np.random.default_rng(seed)

  def fill(path, shape):
    name = path[-1].key
    if name == "kernel" and len(shape) == 4:
      return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:3]))).astype(np.float32)
    if name == "kernel":
      return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
    if name in ("scale", "var"):
      return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)

  return jax.tree_util.tree_map_with_path(fill, inception.variable_shapes(), is_leaf=lambda s: isinstance(s, tuple))


def machine_description() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    if names:
      cpu = names[0]
  except OSError:
    pass
  load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
  return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}{load}"


def main(_):
  devices = jax.devices()
  ext = features_lib.InceptionFeatureExtractor(
    random_variables(), batch_size=FLAGS.batch_size, precision=FLAGS.precision
  )
  rng = np.random.default_rng(0)
  shape = (ext.batch_size, FLAGS.image_size, FLAGS.image_size, 3)
  batch = rng.integers(0, 256, shape, dtype=np.uint8)

  t0 = time.perf_counter()
  for _ in ext.iter_features([batch]):
    pass
  compile_s = time.perf_counter() - t0

  def stream():
    left = FLAGS.num_images
    while left > 0:
      yield batch[: min(left, ext.batch_size)]
      left -= ext.batch_size

  t0 = time.perf_counter()
  n = sum(p.shape[0] for p, _ in ext.iter_features(stream()))
  seconds = time.perf_counter() - t0
  kind = devices[0].device_kind
  result = {
    "benchmark": "fid_inception_feature_throughput",
    "device_kind": kind,
    "platform": devices[0].platform,
    "device_count": len(devices),
    "batch_size": ext.batch_size,
    "per_device_batch": ext.batch_size // len(devices),
    "image_size": FLAGS.image_size,
    "num_images": n,
    "seconds": seconds,
    "images_per_s": n / seconds,
    "first_batch_with_compile_s": compile_s,
    "precision": FLAGS.precision,
    "machine": machine_description(),
    "jax": jax.__version__,
    "command": "python " + " ".join(sys.argv),
  }
  print(json.dumps(result, indent=1))
  if FLAGS.out:
    tag = re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "device"
    path = os.path.join(FLAGS.out, f"fid_throughput_{tag}.json")
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
