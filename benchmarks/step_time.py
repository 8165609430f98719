"""Seconds per DxMI iteration, compile time and achieved FLOP/s; optionally against the official trainer.

    python benchmarks/step_time.py --config=configs/digits.py --iters=20 \\
        --official=/tmp/official --official_python=/tmp/official-venv/bin/python \\
        --out=results/step_time_digits.json
    python benchmarks/step_time.py --config=configs/gaussians2d.py --iters=300 [--official=...] \\
        --out=results/step_time_2d.json

What it measures:

* ``compile_s``: lowering + XLA compilation of the train step (one program per iteration).
* per iteration, after ``--warmup`` untimed ones: the wall time (each step is synced with
  ``block_until_ready``, so asynchronous dispatch hides nothing) and the process CPU time
  (all threads).  The machines these run on are shared: CPU seconds per iteration are
  much less sensitive to other jobs than wall seconds, so both are reported.
* FLOPs: ``flops_per_iter`` is XLA's cost analysis of the *fully unrolled* iteration
  (every ``lax.scan`` unrolled for counting only, lowered, never run), so each loop body
  is counted once per trip.  ``xla_flops_compiled`` is the cost analysis of the program
  that runs, where XLA counts a while-loop body once whatever its trip count; it is
  reported for reference only.  ``achieved_gflops`` = flops_per_iter / median wall time.
* ``peak_memory_bytes``: the device allocator's peak where the backend reports it (GPU,
  TPU), else null.
* ``--official=DIR`` (a clone of swyoon/Diffusion-by-MaxEntIRL) runs ``official_step_time.py`` (this
  folder) in the official code's own interpreter ``--official_python`` (docs/speed.md: its virtualenv)
  for the same shapes (T, B), alternating ``--rounds`` times with our timed block, and reports
  the ratio of the medians (official / ours: > 1 means we are faster).  Its CPU seconds
  per iteration come from the children's rusage, differenced against a 1-iteration run.
* A progress bar counts the timed rounds; before it, a line says what is compiling.
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from tqdm import tqdm  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dxmi_jax import compiler, experiment, parallel, train  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/gaussians2d.py", "Experiment config.")
flags.DEFINE_integer("iters", 300, "Timed iterations per round.")
flags.DEFINE_integer("warmup", 5, "Untimed iterations after compilation.")
flags.DEFINE_integer("rounds", 3, "Alternations of (official, ours) with --official; else timed blocks of ours.")
flags.DEFINE_string("official", "", "Clone of swyoon/Diffusion-by-MaxEntIRL: also time its DxMI_Trainer.")
flags.DEFINE_string("official_python", sys.executable, "Interpreter of the official code's virtualenv.")
flags.DEFINE_integer("official_iters", 0, "Official timed iterations per round (0: same as --iters).")
flags.DEFINE_bool("count_flops", True, "Lower a fully unrolled copy of the step to count its FLOPs.")
flags.DEFINE_string("out", "", "Write the result JSON here as well.")
flags.DEFINE_multi_string(
  "compare",
  [],
  "perf.KEY=VALUE (e.g. cpu_dots=ynnpack): also compile the step with this config.perf change and time it "
  "in every round, alternating with ours (an in-run ratio for a compile choice).",
)
FLAGS = flags.FLAGS


def _flops(cost):
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def unrolled_flops(exp, mesh, state, batch):
  """XLA's FLOP count of the step with every lax.scan / lax.map unrolled (lowered only)."""
  scan, lmap = jax.lax.scan, jax.lax.map

  def scan_unrolled(f, init, xs=None, length=None, **kw):
    kw["unroll"] = True
    return scan(f, init, xs, length, **kw)

  def map_unrolled(f, xs, **kw):
    return scan_unrolled(lambda c, x: (c, f(x)), None, xs)[1]

  jax.lax.scan, jax.lax.map = scan_unrolled, map_unrolled
  try:
    lowered = train.compile_train_step(exp, mesh).lower(state, batch)
  finally:
    jax.lax.scan, jax.lax.map = scan, lmap
  return _flops(lowered.cost_analysis())


def fail(msg):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_step_time.py")
PRESETS = {"gaussians2d": "2d", "digits": "digits", "cifar10": "cifar"}


def official_command(config, iters, warmup, official, python):
  """The command line of official_step_time.py for the shapes of ``config``."""
  preset = PRESETS.get(config.experiment)
  if preset is None:
    fail(f"--official: no official counterpart for config {config.experiment!r} (expected one of {sorted(PRESETS)})")
  return [
    python,
    HARNESS,
    f"--official={official}",
    f"--preset={preset}",
    f"--batch={config.training.batch_size}",
    f"--steps={config.policy.num_steps}",
    f"--iters={iters}",
    f"--warmup={warmup}",
  ]


def check_official(official, python):
  """One error line for a wrong --official / --official_python, before anything compiles."""
  if not os.path.isfile(os.path.join(official, "models", "DxMI", "trainer.py")):
    fail(f"--official: {official!r} has no models/DxMI/trainer.py; expected a clone of swyoon/Diffusion-by-MaxEntIRL")
  if not (os.path.isfile(python) and os.access(python, os.X_OK)):
    fail(f"--official_python: {python!r} is not an executable interpreter")


def run_official(cmd):
  """(JSON record, CPU seconds of the child) of one official harness run."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if out.returncode:
    raise RuntimeError(f"official harness failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
  record = json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  return record, cpu


def cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _perf_variant(config, spec):
  key, sep, value = spec.partition("=")
  if not sep or key not in config.perf:
    raise app.UsageError(f"--compare: expected perf.KEY=VALUE with KEY one of {sorted(config.perf)}, got {spec!r}")
  variant = config.copy_and_resolve_references()
  old = variant.perf[key]
  if isinstance(old, bool):
    variant.perf[key] = value.lower() in ("1", "true", "yes")
  else:
    variant.perf[key] = type(old)(value) if not isinstance(old, str) else value
  experiment.validate(variant)
  return variant


class Timed:
  """One compiled train step with its own state and data stream, timed in blocks."""

  def __init__(self, config, mesh):
    self.exp = experiment.build(config)
    self.mesh = mesh
    self.state = train.initial_state(self.exp, mesh)
    self.batch0 = parallel.global_batch_from_local(self.exp.data.local_batch(0), mesh)
    t0 = time.perf_counter()
    self.compiled = train.compile_train_step(self.exp, mesh).lower(self.state, self.batch0).compile()
    self.compile_s = time.perf_counter() - t0
    self.step_no = 0

  def next_batch(self):
    self.step_no += 1
    return parallel.global_batch_from_local(self.exp.data.local_batch(self.step_no), self.mesh)

  def warm(self, n):
    self.state, m = self.compiled(self.state, self.batch0)
    for _ in range(n):
      self.state, m = self.compiled(self.state, self.next_batch())
    jax.block_until_ready(m)

  def block(self, n):
    wall, cpu = [], []
    for _ in range(n):
      batch = self.next_batch()
      t, c = time.perf_counter(), time.process_time()
      self.state, m = self.compiled(self.state, batch)
      jax.block_until_ready(m)
      wall.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
    return wall, cpu


def say(msg):
  tqdm.write(f"step_time: {msg}", file=sys.stderr)


def main(_):
  config = FLAGS.config
  if FLAGS.official:
    official_command(config, 1, 0, FLAGS.official, FLAGS.official_python)  # a config without a counterpart
    check_official(FLAGS.official, FLAGS.official_python)
  mesh = parallel.make_mesh()
  variants = [(spec, _perf_variant(config, spec)) for spec in FLAGS.compare]
  say(f"compiling the {config.experiment} train step (T={config.policy.num_steps}, B={config.training.batch_size})")
  ours = Timed(config, mesh)
  exp, state, batch0 = ours.exp, ours.state, ours.batch0
  load_start = os.getloadavg()
  say(f"compiled in {ours.compile_s:.1f} s")

  if FLAGS.count_flops:
    say("lowering a fully unrolled copy of the step to count its FLOPs (not compiled, not run)")
  flops_unrolled = unrolled_flops(exp, mesh, state, batch0) if FLAGS.count_flops else float("nan")
  compile_s = ours.compile_s
  flops_compiled = _flops(ours.compiled.cost_analysis())
  others = []
  for spec, v in variants:
    say(f"compiling the step with perf.{spec}")
    others.append((spec, Timed(v, mesh)))
  say(f"{FLAGS.warmup} warm-up iterations")
  ours.warm(FLAGS.warmup)
  for _, t in others:
    t.warm(FLAGS.warmup)

  official = None
  o_iters = FLAGS.official_iters or FLAGS.iters
  if FLAGS.official:
    warm = 20 if config.experiment == "gaussians2d" else 2
    cmd = lambda n: official_command(config, n, warm, FLAGS.official, FLAGS.official_python)  # noqa: E731
    say("the official trainer, one iteration (its start-up CPU time, subtracted below)")
    _, cpu1 = run_official(cmd(1))
    official = {"medians_s": [], "cpu_s_per_iter": [], "command": " ".join(cmd(o_iters))}
  wall, cpu, rounds = [], [], []
  other_wall = {spec: [] for spec, _ in others}
  bar = tqdm(range(FLAGS.rounds), desc="timed rounds", unit="round", dynamic_ncols=True)
  for r in bar:
    entry = {}
    if official is not None:
      bar.set_postfix_str(f"official, {o_iters} iterations")
      rec, cpu_n = run_official(cmd(o_iters))
      official["medians_s"].append(rec["median_s_per_iter"])
      official["cpu_s_per_iter"].append((cpu_n - cpu1) / max(o_iters - 1, 1))
      official["torch"] = rec.get("torch")
      entry["official_median_s"] = rec["median_s_per_iter"]
    bar.set_postfix_str(f"ours, {FLAGS.iters} iterations")
    w, c = ours.block(FLAGS.iters)
    wall += w
    cpu += c
    entry["ours_median_s"] = float(np.median(w))
    if official is not None:
      entry["ratio"] = entry["official_median_s"] / entry["ours_median_s"]
    for spec, t in others:
      ow, _ = t.block(FLAGS.iters)
      other_wall[spec] += ow
      entry[f"median_s[{spec}]"] = float(np.median(ow))
    entry["loadavg_1min"] = os.getloadavg()[0]
    rounds.append(entry)
    tqdm.write(json.dumps({"round": r, **entry}))

  med = float(np.median(wall))
  result = {
    "benchmark": "dxmi_step_time",
    "config": config.experiment,
    "T": config.policy.num_steps,
    "batch_size": config.training.batch_size,
    "perf": config.perf.to_dict(),
    "compiler_options": compiler.options(config.perf),
    "compile_s": compile_s,
    "median_s_per_iter": med,
    "iters_per_s": 1.0 / med,
    "p10_s": float(np.percentile(wall, 10)),
    "p90_s": float(np.percentile(wall, 90)),
    "median_cpu_s_per_iter": float(np.median(cpu)),
    "timed_iters": len(wall),
    "rounds": rounds,
    "flops_per_iter": flops_unrolled,
    "flops_counting": "XLA cost analysis of the step with every lax.scan unrolled (lowered, not run): "
    "each loop body counted once per trip",
    "xla_flops_compiled": flops_compiled,
    "xla_flops_compiled_counting": "cost analysis of the program that runs: a while-loop body counted once",
    "achieved_gflops": flops_unrolled / med / 1e9,
    "peak_memory_bytes": parallel.peak_memory_bytes(),
    "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    "machine": f"{cpu_model()}, {os.cpu_count()} cores",
    "loadavg_start": list(load_start),
    "loadavg_end": list(os.getloadavg()),
    "jax": jax.__version__,
    "command": "python " + " ".join(sys.argv),
  }
  if official is not None:
    o_med = float(np.median(official["medians_s"]))
    o_cpu = float(np.median(official["cpu_s_per_iter"]))
    result["official"] = dict(official, median_s_per_iter=o_med, median_cpu_s_per_iter=o_cpu)
    result["speedup_vs_official"] = o_med / med
    result["speedup_vs_official_per_round"] = [e["ratio"] for e in rounds]
    result["cpu_speedup_vs_official"] = o_cpu / float(np.median(cpu))
  if others:
    result["compared"] = {
      spec: {
        "perf": t.exp.config.perf.to_dict(),
        "compile_s": t.compile_s,
        "median_s_per_iter": float(np.median(other_wall[spec])),
        "ours_speedup": float(np.median(other_wall[spec])) / med,
        "ours_speedup_per_round": [e[f"median_s[{spec}]"] / e["ours_median_s"] for e in rounds],
      }
      for spec, t in others
    }
  print(json.dumps(result, indent=1))
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
