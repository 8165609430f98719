"""Compile time and steady-state seconds per DxMI iteration.

    python benchmarks/step_time.py --config=configs/gaussians2d.py [--iters=300] [--out=results/step_time_2d.json]

The setup of issue 2's reference measurement: T=5, batch 512, MLP width 128 with 3
hidden layers (the gaussians2d defaults).  The median is over ``--iters``
iterations after ``--warmup`` iterations; each iteration is timed with a
device sync, so asynchronous dispatch does not hide work.
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

from dxmi_jax import experiment, parallel, train  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/gaussians2d.py", "Experiment config.")
flags.DEFINE_integer("iters", 300, "Timed iterations (>= 200 for the reported median).")
flags.DEFINE_integer("warmup", 20, "Untimed iterations after compilation.")
flags.DEFINE_string("out", "", "Write the result JSON here as well.")
FLAGS = flags.FLAGS


def main(_):
  config = FLAGS.config
  exp = experiment.build(config)
  mesh = parallel.make_mesh()
  state = train.initial_state(exp, mesh)
  t0 = time.perf_counter()
  step = train.compile_train_step(exp, mesh)
  batch = parallel.global_batch_from_local(exp.data.local_batch(0), mesh)
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for i in range(FLAGS.warmup):
    state, m = step(state, parallel.global_batch_from_local(exp.data.local_batch(i + 1), mesh))
  jax.block_until_ready(m)
  times = []
  for i in range(FLAGS.iters):
    batch = parallel.global_batch_from_local(exp.data.local_batch(i + 1 + FLAGS.warmup), mesh)
    t = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  med = float(np.median(times))
  result = {
      "benchmark": "dxmi_step_time",
      "config": config.experiment, "T": config.policy.num_steps, "batch_size": config.training.batch_size,
      "policy_hidden": list(config.policy.net.get("hidden", [])), "compile_s": compile_s,
      "median_s_per_iter": med, "iters_per_s": 1.0 / med, "p10_s": float(np.percentile(times, 10)),
      "p90_s": float(np.percentile(times, 90)), "timed_iters": FLAGS.iters,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
      "jax": jax.__version__,
      "command": "python " + " ".join(sys.argv),
  }
  print(json.dumps(result, indent=1))
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
