"""Per-device cost and memory of the compiled DxMI train step, by device count (compile only).

Every figure comes from XLA itself: ``jax.jit(step).lower(...).compile()`` on abstract
inputs (``jax.ShapeDtypeStruct`` with their shardings, synthetic data of the real
shape), then ``cost_analysis()["flops"]`` and ``memory_analysis()``.  Nothing runs,
so the real ImageNet-64 / LSUN-256 steps can be measured on a CPU.  Each device count
is compiled in its own subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (fake CPU devices: XLA's SPMD
partitioner produces the per-device program a pod would run).

XLA's cost analysis counts the body of a ``while`` loop (a ``lax.scan``) once, not
once per trip, so FLOPs are those of one trip of each loop; the 8-vs-1 ratio compares
the same program structure, which is what the data-parallel split is about.

    python benchmarks/scaling.py                 # smoke ratios + big-config memory -> results/scaling.json
    python benchmarks/scaling.py --only=smoke    # the global-batch-16 ratios only (about 2 minutes)
    python benchmarks/scaling.py --only=big      # the real ImageNet-64 / LSUN-256 steps only
    python benchmarks/scaling.py --only=policy_grad   # the ImageNet-64 UNet gradient alone, chunked or not

One measurement alone (JSON on stdout):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/scaling.py \
        --worker='{"config": "configs/imagenet64.py:smoke", "batch": 16}'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from tqdm import tqdm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

#: (name, config, global batch, overrides) of the global-batch-16 ratio targets
SMOKE = [
  ("cifar10:smoke", "configs/cifar10.py:smoke", 16, {}),
  ("imagenet64:smoke", "configs/imagenet64.py:smoke", 16, {}),
]
#: the real configs whose per-device memory issue 10 asks for, and the options measured
BIG = [("imagenet64_t10_b128", "configs/imagenet64.py", 128, {}), ("lsun256_t4_b64", "configs/lsun_bedroom.py", 64, {})]
OPTIONS = {"off": {}, "on": {"policy.net.remat": "blocks", "value.remat": "blocks", "training.fsdp": True}}
#: "chunked": "on" plus perf.policy_grad_chunks, chosen per device count so that each policy
#: gradient chunk holds CHUNK_ROWS rows per device (dxmi.policy_update accumulates the chunks)
OPTIONS["chunked"] = dict(OPTIONS["on"])
CHUNK_ROWS = 4
#: "chunked_attn": "chunked" plus attention over ATTENTION_CHUNK query rows at a time (models/attention.py)
ATTENTION_CHUNK = 256
OPTIONS["chunked_attn"] = dict(OPTIONS["chunked"], **{"policy.net.attention_chunk": ATTENTION_CHUNK})
#: "chunked_attn_r1": the same with one row per policy gradient chunk and device
OPTIONS["chunked_attn_r1"] = dict(OPTIONS["chunked_attn"])
#: "chunked_attn_cpuconv": chunked_attn compiled with the convolution a CPU run uses (models/conv.py
#: loop_safe: its kernel gradient is one canonical convolution), not XLA's autodiff of it
OPTIONS["chunked_attn_cpuconv"] = dict(OPTIONS["chunked_attn"], **{"perf.conv": "loop_safe"})
#: "chunked_attn_nofsdp": chunked_attn with the state replicated (what FSDP costs in activations)
OPTIONS["chunked_attn_nofsdp"] = dict(OPTIONS["chunked_attn"], **{"training.fsdp": False})
#: rows per chunk and device of the option sets that chunk the policy gradient
CHUNK_ROWS_OF = {
  "chunked": CHUNK_ROWS,
  "chunked_attn": CHUNK_ROWS,
  "chunked_attn_r1": 1,
  "chunked_attn_cpuconv": CHUNK_ROWS,
  "chunked_attn_nofsdp": CHUNK_ROWS,
}
#: LLVM code generation at -O0: the HLO passes, SPMD partitioning and buffer assignment (what
#: cost_analysis / memory_analysis report) are unchanged, the CPU compile is several times faster
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
GB = 1e9


def load_config(spec: str, overrides=None):
  """``path.py[:variant]`` -> ConfigDict with dotted overrides applied (synthetic data)."""
  import importlib  # pylint: disable=import-outside-toplevel

  path, _, variant = spec.partition(":")
  module = importlib.import_module(path.replace("/", ".").removesuffix(".py"))
  c = module.get_config(variant)
  c.data.name = "synthetic"
  c.init.policy_checkpoint = ""
  # the convolution GPUs and TPUs compile ("auto" picks the im2col "loop_safe" gradient on a CPU
  # backend only, whose patch matrices would dominate a CPU memory analysis)
  c.perf.conv = "xla"
  # XLA's default dot library (YNNPACK fusions), as every earlier row of results/scaling.json was
  # compiled: the CPU-speed switch "eigen" (compiler.py) fuses less, which a memory table should not mix
  c.perf.cpu_dots = "ynnpack"
  if c.data.class_cond:
    c.data.num_classes = c.policy.net.get("num_classes") or c.data.num_classes
  for key, value in (overrides or {}).items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def measure(spec: str, batch: int, overrides=None) -> dict:
  """Compiles the train step of ``spec`` at global ``batch`` on every visible device."""
  import jax  # pylint: disable=import-outside-toplevel
  from dxmi_jax import experiment, parallel, train  # pylint: disable=import-outside-toplevel

  c = load_config(spec, overrides)
  c.training.batch_size = batch
  exp = experiment.build(c)
  mesh = parallel.make_mesh()
  t0 = time.time()
  lowered = train.lower_train_step(exp, mesh)
  t_lower = time.time() - t0
  compiled = lowered.compile()
  t_compile = time.time() - t0 - t_lower
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  return {
    "config": spec,
    "batch": batch,
    "overrides": overrides or {},
    "devices": jax.device_count(),
    "flops_per_device": float(cost.get("flops", float("nan"))),
    "temp_bytes": int(mem.temp_size_in_bytes),
    "argument_bytes": int(mem.argument_size_in_bytes),
    "output_bytes": int(mem.output_size_in_bytes),
    "alias_bytes": int(mem.alias_size_in_bytes),
    "generated_code_bytes": int(mem.generated_code_size_in_bytes),
    # what one device holds at the peak: arguments + temporaries (+ outputs not aliased to donated inputs)
    "peak_bytes": int(
      mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
    ),
    "lower_s": round(t_lower, 1),
    "compile_s": round(t_compile, 1),
    "compile_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
  }


def measure_policy_grad(rows: int, chunks: int, overrides=None) -> dict:
  """Temporaries of the ImageNet-64 policy network's gradient alone (1 device), at ``rows`` rows.

  The gradient (dropout on, mean-square output loss) is accumulated over ``chunks`` chunks of
  rows k, k + K, ... in a lax.scan, as ``dxmi.policy_update`` does with perf.policy_grad_chunks;
  chunks=1 is the plain gradient.  The policy minibatch's UNet gradient is the largest stage
  of the real step, so this compiles in a minute or two where the whole step takes 10-20.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from dxmi_jax import experiment  # pylint: disable=import-outside-toplevel

  c = load_config("configs/imagenet64.py", overrides)
  exp = experiment.build(c)
  net = exp.policy.net
  params = exp.abstract_state().policy.params["net"]

  def loss(p, x, t, y):
    out = net.apply({"params": p}, x, t, y=y, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    return jnp.mean(out.astype(jnp.float32) ** 2)

  def grad(p, x, t, y):
    if chunks == 1:
      return jax.grad(loss)(p, x, t, y)
    split = lambda a: jnp.moveaxis(a.reshape((rows // chunks, chunks) + a.shape[1:]), 1, 0)

    def body(total, inp):
      return jax.tree.map(jnp.add, total, jax.grad(loss)(p, *inp)), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, p), (split(x), split(t), split(y)))
    return jax.tree.map(lambda g: g / chunks, total)

  args = (
    jax.ShapeDtypeStruct((rows, 64, 64, 3), jnp.float32),
    jax.ShapeDtypeStruct((rows,), jnp.float32),
    jax.ShapeDtypeStruct((rows,), jnp.int32),
  )
  t0 = time.time()
  mem = jax.jit(grad).lower(params, *args).compile().memory_analysis()
  return {
    "what": "imagenet64 policy network gradient",
    "rows": rows,
    "chunks": chunks,
    "overrides": overrides or {},
    "temp_bytes": int(mem.temp_size_in_bytes),
    "argument_bytes": int(mem.argument_size_in_bytes),
    "compile_s": round(time.time() - t0, 1),
  }


#: (name, job) of the ImageNet-64 policy-gradient-alone measurements (16 rows: one device's share
#: of B=128 at 8 devices)
POLICY_GRAD_JOBS = [
  ("plain", {"rows": 16, "chunks": 1, "overrides": {}}),
  ("remat", {"rows": 16, "chunks": 1, "overrides": {"policy.net.remat": "blocks"}}),
  (
    "remat_no_attention",
    {"rows": 16, "chunks": 1, "overrides": {"policy.net.remat": "blocks", "policy.net.attention_resolutions": []}},
  ),
  ("chunks4", {"rows": 16, "chunks": 4, "overrides": {}}),
  ("attn128", {"rows": 16, "chunks": 1, "overrides": {"policy.net.attention_chunk": 128}}),
  ("chunks4_attn256", {"rows": 16, "chunks": 4, "overrides": {"policy.net.attention_chunk": 256}}),
  ("chunks4_attn128", {"rows": 16, "chunks": 4, "overrides": {"policy.net.attention_chunk": 128}}),
]


def policy_grad_memory(names=None):
  """The policy network's gradient alone: plain, remat, without attention, chunked rows and/or attention."""
  rows = []
  bar = tqdm([(n, j) for n, j in POLICY_GRAD_JOBS if not names or n in names], unit="compile", dynamic_ncols=True)
  for name, job in bar:
    bar.set_description_str(f"compiling the policy gradient {name}")
    r = run_worker(dict(job, policy_grad=True), 1)
    r["name"] = name
    tqdm.write(
      f"policy grad {name}: rows={r['rows']} chunks={r['chunks']} {r['overrides']}: {r['temp_bytes'] / GB:.2f} GB"
    )
    rows.append(r)
  return rows


def measure_sampler(spec: str, batch: int) -> dict:
  """The training-time sampler (``evaluators.images.ImageEvaluator``'s) compiled on every visible device."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from dxmi_jax import experiment, generation, parallel  # pylint: disable=import-outside-toplevel

  c = load_config(spec)
  exp = experiment.build(c)
  mesh = parallel.make_mesh()
  gen = generation.make_generator(exp.policy, exp.data_shape[1:], batch, mesh, value_apply=exp.nets.value_apply)
  abstract = exp.abstract_state()
  y = jax.ShapeDtypeStruct((batch,), jnp.int32) if exp.class_cond else None
  t0 = time.time()
  compiled = gen.lower(abstract.policy.params, jax.random.PRNGKey(0), y, abstract.value.params).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {
    "config": spec,
    "batch": batch,
    "devices": jax.device_count(),
    "flops_per_device": float(cost.get("flops", float("nan"))),
    "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
    "compile_s": round(time.time() - t0, 1),
  }


def sampler_ratios():
  rows = []
  bar = tqdm(SMOKE, unit="config", dynamic_ncols=True)
  for name, spec, _, _ in bar:
    bar.set_description_str(f"compiling the {name} sampler on 1 and 8 fake devices")
    one, eight = (run_worker({"sampler": True, "config": spec, "batch": 64}, n) for n in (1, 8))
    row = {
      "name": name,
      "batch": 64,
      "one": one,
      "eight": eight,
      "flops_ratio": eight["flops_per_device"] / one["flops_per_device"],
    }
    tqdm.write(f"{name:18s} sampler, 64 samples: per-device FLOPs 8 vs 1 = {row['flops_ratio']:.3f}x")
    rows.append(row)
  return rows


def run_worker(job: dict, devices: int, timeout: int = 3600) -> dict:
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  proc = subprocess.run(
    [sys.executable, os.path.abspath(__file__), "--worker=" + json.dumps(job)],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if proc.returncode:
    raise RuntimeError(f"worker {job} at {devices} devices failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def smoke_ratios():
  rows = []
  bar = tqdm(SMOKE, unit="config", dynamic_ncols=True)
  for name, spec, batch, over in bar:
    bar.set_description_str(f"compiling the {name} train step on 1 and 8 fake devices")
    one = run_worker({"config": spec, "batch": batch, "overrides": over}, 1)
    eight = run_worker({"config": spec, "batch": batch, "overrides": over}, 8)
    row = {
      "name": name,
      "batch": batch,
      "one": one,
      "eight": eight,
      "flops_ratio": eight["flops_per_device"] / one["flops_per_device"],
      "temp_ratio": eight["temp_bytes"] / one["temp_bytes"],
    }
    tqdm.write(
      f"{name:18s} B={batch}: per-device FLOPs 8 vs 1 = {row['flops_ratio']:.3f}x (target <= 0.16), "
      f"temporaries = {row['temp_ratio']:.3f}x (target <= 0.5)  "
      f"[1: {one['flops_per_device'] / 1e9:.2f} GFLOP, {one['temp_bytes'] / 1e6:.1f} MB; "
      f"8: {eight['flops_per_device'] / 1e9:.2f} GFLOP, {eight['temp_bytes'] / 1e6:.1f} MB]"
    )
    rows.append(row)
  return rows


def big_memory(device_counts=(1, 8, 64), options=("off", "on", "chunked"), names=None):
  rows = []
  jobs = [
    (name, spec, batch, over, opt, n)
    for name, spec, batch, over in BIG
    if not names or name in names
    for opt in options
    for n in device_counts
  ]
  bar = tqdm(jobs, unit="compile", dynamic_ncols=True)
  for name, spec, batch, over, opt, n in bar:
    bar.set_description_str(f"compiling {name} (options {opt}) on {n} fake devices")
    job_over = dict(over, **OPTIONS[opt])
    if opt in CHUNK_ROWS_OF:
      job_over["perf.policy_grad_chunks"] = max(1, batch // n // CHUNK_ROWS_OF[opt])
    r = run_worker({"config": spec, "batch": batch, "overrides": job_over}, n)
    r.update(name=name, options=opt)
    tqdm.write(
      f"{name:20s} options={opt:3s} devices={n:3d}: per device temporaries "
      f"{r['temp_bytes'] / GB:7.2f} GB, arguments {r['argument_bytes'] / GB:6.2f} GB, "
      f"peak {r['peak_bytes'] / GB:7.2f} GB  (compile {r['compile_s']:.0f} s, "
      f"{r['compile_rss_gb']:.1f} GB RSS)"
    )
    rows.append(r)
  return rows


def _pg_name(row: dict) -> str:
  """The job name of a policy_grad row (rows written before jobs had names are matched by content)."""
  if "name" in row:
    return row["name"]
  for name, job in POLICY_GRAD_JOBS:
    if (job["rows"], job["chunks"], job["overrides"]) == (row["rows"], row["chunks"], row["overrides"]):
      return name
  return ""


def machine():
  import jax  # pylint: disable=import-outside-toplevel

  return {
    "platform": platform.platform(),
    "machine": platform.machine(),
    "cpus": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "backend": "cpu (fake devices)",
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--worker", default="", help="internal: one measurement as JSON")
  ap.add_argument("--only", default="", choices=["", "smoke", "sampler", "big", "policy_grad"])
  ap.add_argument("--devices", default="1,8,64", help="device counts of the big-config memory table")
  ap.add_argument(
    "--options", default="off,on,chunked", help="option sets of the big-config table: " + ",".join(OPTIONS)
  )
  ap.add_argument(
    "--names",
    default="",
    help="what to measure (default all): big configs "
    + ",".join(b[0] for b in BIG)
    + "; policy_grad jobs "
    + ",".join(n for n, _ in POLICY_GRAD_JOBS),
  )
  ap.add_argument("--out", default=os.path.join(REPO, "results", "scaling.json"))
  args = ap.parse_args()
  if args.worker:
    job = json.loads(args.worker)
    if job.get("policy_grad"):
      print(json.dumps(measure_policy_grad(job["rows"], job["chunks"], job.get("overrides"))))
    elif job.get("sampler"):
      print(json.dumps(measure_sampler(job["config"], job["batch"])))
    else:
      print(json.dumps(measure(job["config"], job["batch"], job.get("overrides"))))
    return
  t0 = time.time()
  out = {}
  if os.path.exists(args.out):
    with open(args.out) as f:
      out = json.load(f)
  if args.only in ("", "smoke"):
    out["smoke"] = smoke_ratios()
  if args.only in ("", "smoke", "sampler"):
    out["sampler"] = sampler_ratios()
  names = tuple(n for n in args.names.split(",") if n)
  if args.only in ("", "policy_grad"):
    rows = policy_grad_memory(names)
    fresh = {r["name"] for r in rows}
    out["policy_grad"] = [r for r in out.get("policy_grad", []) if _pg_name(r) not in fresh] + rows
  if args.only in ("", "big"):
    rows = big_memory(
      tuple(int(v) for v in args.devices.split(",")),
      tuple(o for o in args.options.split(",") if o),
      names,
    )
    key = lambda r: (r["name"], r["options"], r["devices"])  # new rows replace the same measurement
    fresh = {key(r) for r in rows}
    out["big"] = [r for r in out.get("big", []) if key(r) not in fresh] + rows
  # every invocation that wrote into this file, oldest first (a partial --only run keeps the rest)
  earlier = out.pop("command", None)
  commands = out.get("commands", [earlier] if earlier else [])
  commands.append(
    {"command": "python benchmarks/scaling.py " + " ".join(sys.argv[1:]), "wall_s": round(time.time() - t0, 1)}
  )
  out.update(machine=dict(out.get("machine", {}), **machine()), commands=commands)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  from dxmi_jax import io  # pylint: disable=import-outside-toplevel

  io.atomic_write_json(args.out, out)
  print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
  main()
