"""Images/s of the T-step sampler of a config, and peak device memory (issue 10, item 5).

    python benchmarks/sample_throughput.py --config=configs/cifar10.py --batch=1000 --batches=5 \
        --config.data.name=synthetic --config.init.policy_checkpoint= --out=results/sample_throughput_cifar10.json

Runs the production sampler (``generation.experiment_generator``: jitted once, split over every
device on the data mesh) on a freshly initialised policy (throughput does not depend on
the weights). The first batch (compilation) is timed separately; the timed part covers
``--batches`` batches, each synced to the host as ``sample_many`` does. Peak memory is the
device allocator's ``peak_bytes_in_use`` where the backend reports it (GPU, TPU), else null.
"""

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dxmi_jax import experiment, generation, io, parallel, train  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/cifar10.py", "Experiment config.")
flags.DEFINE_integer("batch", 1000, "Global sampling batch, split over all devices.")
flags.DEFINE_integer("batches", 5, "Timed batches after the compile batch.")
flags.DEFINE_string("out", "", "Write the result JSON here as well.")
FLAGS = flags.FLAGS


def main(_):
  config = FLAGS.config
  if FLAGS.batch < 1 or FLAGS.batch % jax.device_count():
    raise app.UsageError(f"--batch={FLAGS.batch} must be >= 1 and divisible by the {jax.device_count()} devices")
  exp = experiment.build(config)
  mesh = parallel.make_mesh()
  state = train.initial_state(exp, mesh)
  gen = generation.experiment_generator(exp, FLAGS.batch, mesh)
  labels = generation.sample_labels(exp, FLAGS.batch * (FLAGS.batches + 1), 0)

  def one(i):
    y = None if labels is None else jax.numpy.asarray(labels[i * FLAGS.batch : (i + 1) * FLAGS.batch])
    return np.asarray(gen(state.policy.params, jax.random.PRNGKey(i), y, state.value.params))

  t0 = time.perf_counter()
  one(0)
  first_s = time.perf_counter() - t0
  times = []
  for i in range(1, FLAGS.batches + 1):
    t = time.perf_counter()
    x = one(i)
    times.append(time.perf_counter() - t)
  assert np.all(np.isfinite(x)), "non-finite samples"
  med = float(np.median(times))
  result = {
    "benchmark": "dxmi_sample_throughput",
    "config": config.experiment,
    "T": config.policy.num_steps,
    "batch": FLAGS.batch,
    "first_batch_s (compile + run)": first_s,
    "median_s_per_batch": med,
    "images_per_s": FLAGS.batch / med,
    "peak_memory_bytes": parallel.peak_memory_bytes(),
    "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    "jax": jax.__version__,
    "command": "python " + " ".join(sys.argv),
  }
  print(json.dumps(result, indent=1))
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    io.atomic_write_json(FLAGS.out, result)


if __name__ == "__main__":
  app.run(main)
