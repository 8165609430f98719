"""The paper's CIFAR-10 table in miniature, on real data: DxMI on scikit-learn's digits (CPU).

Rows (the same pretrained DDPM network everywhere):
  DDPM T=1000      Ho et al. ancestral sampling over all 1000 steps (the "teacher" quality)
  VAR T=10 / T=4   the CIFAR VAR ancestral sampler with its schedule sigmas (DxMI's starting point)
  DDIM T=10 / T=4  deterministic DDIM on the same T-step schedule
  DxMI T=10 / T=4  the VAR sampler after DxMI fine-tuning (configs/digits.py, :t4)
  DxMI T=10 τ=0    the same without entropy bonus and velocity cost (configs/digits.py:tau0)
  data             real fit images (a random subset of the same size): the metric's floor

Metric: ``dxmi_jax.metrics.digits_classifier`` (Fréchet distance / precision / recall in a small
CNN's features against the 355-image *test* split, plus the predicted-class histogram).

Model selection, as the official trainer does it but never on test: the DDPM and every DxMI
run train on the *fit* split; each DxMI run evaluates the digits FD against the *val* split
(181 images carved out of train) at iteration 0 and every 100 iterations and keeps the best
checkpoint.  Each DxMI row reports the last checkpoint and the best-on-val one (its step is
recorded; step 0 means the pretrained sampler won), both scored on test.

"Seeds": one pretrained DDPM (training.seed of configs/digits.py).  Baselines: ``--seeds``
sampling seeds of that network.  DxMI: one fine-tuning run per seed (training.seed = seed:
value init, rollout noise, minibatch order and data order all change), each sampled with
the same sampling seed as the baselines' matching seed.  The data row draws ``--num_samples``
fit images per seed.  Mean and sample std (ddof=1) over seeds.  The claims table compares
test FDs seed by seed.

    python benchmarks/table_digits.py --workdir=workdir_digits
    (then results/table_digits.json, results/table_digits.md, results/digits_*.png,
     results/digits_curves.png: val FD, mean energies of data and samples, and the sigmas)

The fine-tuning runs are the long part (about 20 minutes per T=10 run on 2 cores); they can be
run first, several processes at once, each pinned to a core:

    taskset -c 0 python benchmarks/table_digits.py --workdir=W --train_only --rows=dxmi_t10 &
    taskset -c 1 python benchmarks/table_digits.py --workdir=W --train_only --rows=dxmi_t10_tau0,dxmi_t4 &

Everything a step produces is cached in the workdir (ddpm/, <row>_s<seed>/ with its checkpoints and
metrics.jsonl, rows/<row>_s<seed>.json), so an interrupted run continues where it stopped (a DxMI
run resumes from its last checkpoint); delete the workdir to start over.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
from tqdm import tqdm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache"))

from dxmi_jax import io, modes  # noqa: E402

ROW_ORDER = (
  "ddpm1000",
  "var_t10",
  "ddim_t10",
  "dxmi_t10",
  "dxmi_t10_tau0",
  "var_t4",
  "ddim_t4",
  "dxmi_t4",
  "data",
)
LABELS = {
  "ddpm1000": "DDPM (pretrained), T=1000",
  "var_t10": "VAR ancestral (pretrained), T=10",
  "ddim_t10": "DDIM (pretrained), T=10",
  "dxmi_t10": "**DxMI**, T=10",
  "dxmi_t10_tau0": "DxMI, T=10, τ=0",
  "var_t4": "VAR ancestral (pretrained), T=4",
  "ddim_t4": "DDIM (pretrained), T=4",
  "dxmi_t4": "**DxMI**, T=4",
  "data": "real fit images (metric floor)",
}
NFE = {
  "ddpm1000": 1000,
  "var_t10": 10,
  "ddim_t10": 10,
  "dxmi_t10": 10,
  "dxmi_t10_tau0": 10,
  "var_t4": 4,
  "ddim_t4": 4,
  "dxmi_t4": 4,
  "data": "–",
}
DXMI_VARIANTS = {"dxmi_t10": "", "dxmi_t10_tau0": "tau0", "dxmi_t4": "t4"}
METRICS = ("fd", "precision", "recall", "class_tv", "min_class_frac")


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=os.path.join(REPO, "workdir_digits"))
  p.add_argument("--results", default=os.path.join(REPO, "results"))
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (see the module docstring)")
  p.add_argument("--num_samples", type=int, default=500, help="samples per row and seed")
  p.add_argument(
    "--ddpm1000_seeds", type=int, default=-1, help="how many of --seeds the (slow) 1000-step row uses; -1: all"
  )
  p.add_argument(
    "--row_seeds",
    default="",
    help="per-row seed lists overriding --seeds, e.g. 'dxmi_t10_tau0=0,1;ddpm1000=0' (a row with fewer runs)",
  )
  p.add_argument("--dxmi_iters", type=int, default=-1, help="DxMI iterations; -1: the config's")
  p.add_argument("--rows", default=",".join(ROW_ORDER), help="subset of " + ",".join(ROW_ORDER))
  p.add_argument(
    "--train_only",
    action="store_true",
    help="only run (or resume) the DxMI fine-tuning of --rows x --seeds; several such processes may run at once",
  )
  return p.parse_args(argv)


def _save_grid(path, images_uint8, scale=4):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from dxmi_jax import samples as samples_lib  # pylint: disable=import-outside-toplevel

  grid = samples_lib.make_grid(images_uint8[:64], nrow=8, padding=1)[..., 0]
  grid = np.kron(grid, np.ones((scale, scale), np.uint8))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(grid).save(path)


def _config(variant="", **over):
  from configs import digits  # pylint: disable=import-outside-toplevel

  c = digits.get_config(variant)
  for key, v in over.items():
    sec, name = key.split("__")
    c[sec][name] = v
  return c


def pretrain(workdir):
  """The one pretrained DDPM: (its folder, the seconds pretraining took)."""

  out = os.path.join(workdir, "ddpm")
  meta = os.path.join(out, "pretrain", "meta.json")
  if not os.path.exists(meta):
    c = _config()
    print(f"DDPM pretraining into {out}: compiling, then {c.pretrain.num_iters} iterations", flush=True)
    modes.run(c, out, "pretrain")
  with open(meta) as f:
    m = json.load(f)
  return out, float(m.get("meta", m).get("seconds", float("nan")))


def baseline_sampler(ddpm_dir, kind, T):
  """(policy, params) of the pretrained network under sampler ``kind`` with T steps."""
  from dxmi_jax import experiment, train  # pylint: disable=import-outside-toplevel
  from dxmi_jax.policies import build_policy  # pylint: disable=import-outside-toplevel

  exp = experiment.build(_config(init__policy_checkpoint=ddpm_dir))
  params = train.load_pretrained(exp).policy.params
  section = {"kind": kind, "num_steps": T}
  if kind in ("var", "ddim"):
    section["trainable_sigma"] = "fix_last" if kind == "var" else False
  policy = build_policy(section, exp.policy.net)
  return policy, {"net": params["net"], "log_sigma": np.asarray(policy.init_log_sigma())}


def dxmi_run_dir(workdir, name, seed):
  return os.path.join(workdir, f"{name}_s{seed}")


def dxmi_train(ddpm_dir, workdir, name, seed, iters):
  """Fine-tunes (or resumes, or reuses) the DxMI run of (row, seed); returns its folder and seconds."""
  run_dir = dxmi_run_dir(workdir, name, seed)
  over = dict(init__policy_checkpoint=ddpm_dir, training__seed=seed)
  if iters > 0:
    over["training__num_iters"] = iters
  t0 = time.time()
  modes.run(_config(DXMI_VARIANTS[name], **over), run_dir, "train")
  return run_dir, time.time() - t0


def dxmi_samplers(name, run_dir):
  """{"last": (policy, params, step), "best": ...} of a finished DxMI run (best by the val metric)."""
  from dxmi_jax import checkpoint as ckpt_lib, experiment  # pylint: disable=import-outside-toplevel

  exp = experiment.build(_config(DXMI_VARIANTS[name]))
  out = {}
  for which in ("last", "best"):
    raw, _ = ckpt_lib.load_raw(run_dir, best=which == "best")
    step = ckpt_lib.committed_steps(run_dir, best=which == "best")[-1]
    out[which] = (exp.policy, raw["policy"]["params"], step)
  return out


def learning_curves(run_dir):
  """Per-iteration traces of a DxMI run from its metrics.jsonl."""
  from dxmi_jax import writers  # pylint: disable=import-outside-toplevel

  recs = writers.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
  train = [r for r in recs if r.get("kind") == "train"]
  evals = [r for r in recs if r.get("kind") == "eval" and r.get("digits_fd") is not None]
  sig_keys = sorted(
    (k for k in (train[0] if train else {}) if k.startswith("sigma/sigma_")), key=lambda k: int(k.split("_")[-1])
  )
  return {
    "train_step": [r["step"] for r in train],
    "pos_e": [r.get("ebm/pos_e") for r in train],
    "neg_e": [r.get("ebm/neg_e") for r in train],
    "sigma": [[r.get(k) for k in sig_keys] for r in train],
    "eval_step": [r["step"] for r in evals],
    "val_fd": [r["digits_fd"] for r in evals],
  }


def generate(policy, params, num, seed, batch=500):
  from dxmi_jax import sampling, samples as samples_lib  # pylint: disable=import-outside-toplevel

  bs = min(batch, num)
  gen = sampling.make_generator(policy, (8, 8, 1), bs)
  return samples_lib.to_uint8(sampling.sample_many(gen, params, seed, num, bs), "round")


def _summary(per_seed):
  out = {}
  for key in METRICS:
    v = np.array([r[key] for r in per_seed], np.float64)
    out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
  out["class_hist_mean"] = [float(v) for v in np.mean([r["class_hist"] for r in per_seed], axis=0)]
  return out


def _fmt(s, key, digits=2):
  m = s[key]
  return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def _line(label, nfe, s, n, extra=""):
  return (
    f"| {label} | {nfe} | {_fmt(s, 'fd')} | {_fmt(s, 'precision', 3)} | "
    f"{_fmt(s, 'recall', 3)} | {_fmt(s, 'class_tv', 3)} | {n} | {extra} |"
  )


def markdown(result):
  lines = [
    "| sampler (same pretrained UNet) | NFE | digits FD ↓ (test) | precision ↑ | recall ↑ | class TV ↓ | seeds | iterations |",
    "|---|---:|---:|---:|---:|---:|---:|---|",
  ]
  for name in ROW_ORDER:
    if name not in result["rows"]:
      continue
    row = result["rows"][name]
    n = len(row["per_seed"])
    if name in DXMI_VARIANTS:
      iters = sorted({r["num_iters"] for r in row["per_seed"]})
      lines.append(_line(LABELS[name] + ", last", NFE[name], row["summary"], n, "/".join(map(str, iters))))
      steps = ", ".join(str(r["best"]["step"]) for r in row["per_seed"])
      lines.append(_line(LABELS[name] + ", best on val", NFE[name], row["summary_best"], n, f"selected: {steps}"))
    else:
      lines.append(_line(LABELS[name], NFE[name], row["summary"], n))
  claims = result.get("claims")
  if claims:
    lines += ["", "| claim (matched seeds, test FD) | last | best on val |", "|---|---|---|"]
    for c in claims:
      lines.append(f"| {c['claim']} | {c['last']} | {c['best']} |")
  return "\n".join(lines) + "\n"


def _fd_by_seed(row, which="last"):
  return {r["seed"]: (r["best"]["fd"] if which == "best" and "best" in r else r["fd"]) for r in row["per_seed"]}


def claims(rows):
  """The paper's claims as per-seed comparisons of test FD; each cell: 'k/n seeds' or 'not run'."""
  tests = [
    ("DxMI T=10 < VAR T=10", "dxmi_t10", "var_t10"),
    ("DxMI T=10 < DDIM T=10", "dxmi_t10", "ddim_t10"),
    ("DxMI T=4 < VAR T=4", "dxmi_t4", "var_t4"),
    ("DxMI T=10 (τ>0) < DxMI T=10 τ=0", "dxmi_t10", "dxmi_t10_tau0"),
  ]
  out = []
  for text, a, b in tests:
    cell = {"claim": text}
    for which in ("last", "best"):
      if a not in rows or b not in rows:
        cell[which] = "not run"
        continue
      fa, fb = _fd_by_seed(rows[a], which), _fd_by_seed(rows[b], which if b in DXMI_VARIANTS else "last")
      seeds = sorted(set(fa) & set(fb))
      wins = sum(fa[s] < fb[s] for s in seeds)
      cell[which] = f"{'holds' if wins == len(seeds) else 'fails'} ({wins}/{len(seeds)} seeds)"
    out.append(cell)
  return out


def plot_curves(rows, path):
  """Validation FD, mean energies of data and samples, and the sigmas against iterations."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  names = [n for n in DXMI_VARIANTS if n in rows]
  fig, axes = plt.subplots(len(names), 3, figsize=(15, 3.6 * len(names)), squeeze=False)
  for i, name in enumerate(names):
    ax_fd, ax_e, ax_s = axes[i]
    for r in rows[name]["per_seed"]:
      c = r["curves"]
      ax_fd.plot(c["eval_step"], c["val_fd"], marker=".", label=f"seed {r['seed']}")
      ax_e.plot(c["train_step"], c["pos_e"], color=f"C{r['seed']}", label=f"data, seed {r['seed']}")
      ax_e.plot(c["train_step"], c["neg_e"], color=f"C{r['seed']}", ls="--", label=f"samples, seed {r['seed']}")
      if r["seed"] == rows[name]["per_seed"][0]["seed"]:
        sig = np.asarray(c["sigma"], np.float64)
        for t in range(sig.shape[1] if sig.ndim == 2 else 0):
          ax_s.plot(c["train_step"], sig[:, t], label=f"σ_{t}")
    ax_fd.set(title=f"{LABELS[name].replace('*', '')}: digits FD on val", xlabel="iteration", ylabel="FD")
    ax_e.set(title="mean energy (data solid, samples dashed)", xlabel="iteration")
    e = np.asarray([v for r in rows[name]["per_seed"] for v in r["curves"]["pos_e"] + r["curves"]["neg_e"]], float)
    e = e[np.isfinite(e)]
    if e.size:  # a few single-iteration spikes would flatten the curves
      lo, hi = np.percentile(e, [0.5, 99.5])
      ax_e.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    ax_s.set(
      title=f"sigmas (seed {rows[name]['per_seed'][0]['seed']}, sampling order)", xlabel="iteration", yscale="log"
    )
    for ax in (ax_fd, ax_s):
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _machine():
  import jax  # pylint: disable=import-outside-toplevel

  return {
    "platform": platform.platform(),
    "processor": platform.processor(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def _seed_record(name, seed, args, ddpm_dir, clf):
  """One (row, seed) record against the test split, with its sample images."""
  from dxmi_jax.data import digits as digits_data  # pylint: disable=import-outside-toplevel

  rec = {"seed": seed}
  if name == "data":
    imgs, _ = digits_data.digits_arrays("fit")
    imgs = imgs[np.random.default_rng(seed).choice(len(imgs), args.num_samples, replace=False)]
  elif name in DXMI_VARIANTS:
    run_dir, secs = dxmi_train(ddpm_dir, args.workdir, name, seed, args.dxmi_iters)
    samplers = dxmi_samplers(name, run_dir)
    for which in ("best", "last"):
      policy, params, step = samplers[which]
      imgs = generate(policy, params, args.num_samples, 1000 + seed)
      m = clf.evaluate(imgs, "test")
      m["step"] = int(step)
      m["sigma"] = [float(v) for v in np.exp(np.asarray(params["log_sigma"]))]
      if which == "best":
        rec["best"] = m
    rec.update(m)
    rec["num_iters"] = int(samplers["last"][2])
    rec["train_seconds_this_invocation"] = secs
    done = os.path.join(run_dir, "benchmark_train.json")  # written by the --train_only process that trained it
    if os.path.exists(done):
      with open(done) as f:
        rec["train"] = json.load(f)
    rec["curves"] = learning_curves(run_dir)
    return rec, imgs
  else:
    kind, T = ("ddpm", 1000) if name == "ddpm1000" else (name.split("_t")[0], int(name.split("_t")[1]))
    policy, params = baseline_sampler(ddpm_dir, kind, T)
    imgs = generate(policy, params, args.num_samples, 1000 + seed)
  rec.update(clf.evaluate(imgs, "test"))
  return rec, imgs


def main(argv=None):
  args = _args(argv)
  from dxmi_jax.metrics import digits_classifier  # pylint: disable=import-outside-toplevel

  seeds = [int(s) for s in args.seeds.split(",")]
  rows = [r for r in args.rows.split(",") if r]
  row_seeds = {}
  for item in filter(None, args.row_seeds.split(";")):
    name, _, spec = item.partition("=")
    row_seeds[name.strip()] = [int(v) for v in spec.split(",") if v.strip()]
  bad = [r for r in list(rows) + list(row_seeds) if r not in ROW_ORDER]
  if bad:
    raise SystemExit(f"--rows: unknown {bad}; expected a subset of {ROW_ORDER}")
  os.makedirs(args.workdir, exist_ok=True)
  rows_dir = os.path.join(args.workdir, "rows")
  os.makedirs(rows_dir, exist_ok=True)
  t_start = time.time()
  ddpm_dir, pretrain_seconds = pretrain(args.workdir)
  if args.train_only:
    jobs = [(name, seed) for name in rows if name in DXMI_VARIANTS for seed in seeds]
    bar = tqdm(jobs, desc="table_digits --train_only", unit="run", dynamic_ncols=True)
    for name, seed in bar:
      bar.set_description_str(f"{name} seed {seed}: compiling, then training")
      run_dir, secs = dxmi_train(ddpm_dir, args.workdir, name, seed, args.dxmi_iters)
      io.atomic_write_json(os.path.join(run_dir, "benchmark_train.json"), {"seconds": secs, "machine": _machine()})
      tqdm.write(f"{name} seed {seed}: trained in {secs:.0f} s ({run_dir})")
    return None
  os.makedirs(args.results, exist_ok=True)
  clf = digits_classifier.default_classifier()
  result = {
    "command": "python benchmarks/table_digits.py " + " ".join(sys.argv[1:] if argv is None else argv),
    "machine": _machine(),
    "classifier_test_accuracy": clf.accuracy("test"),
    "reference": "digits test split (355 images); DxMI checkpoints selected on the val split (181 images)",
    "num_samples": args.num_samples,
    "seeds": seeds,
    "pretrain_seconds": pretrain_seconds,
    "rows": {},
  }
  out_json = os.path.join(args.results, "table_digits.json")
  seeds_of = {}
  for name in [r for r in ROW_ORDER if r in rows]:
    use = seeds[: args.ddpm1000_seeds] if name == "ddpm1000" and args.ddpm1000_seeds > 0 else seeds
    seeds_of[name] = row_seeds.get(name, use)
  bar = tqdm(total=sum(map(len, seeds_of.values())), desc="table_digits", unit="cell", dynamic_ncols=True)
  for name, use in seeds_of.items():
    t0 = time.time()
    per_seed = []
    for seed in use:
      cache = os.path.join(rows_dir, f"{name}_s{seed}.json")
      what = "training (compiling first), " if name in DXMI_VARIANTS else "compiling the sampler, "
      bar.set_description_str(f"{name} seed {seed}: {what}sampling {args.num_samples}, scoring")
      if os.path.exists(cache):
        with open(cache) as f:
          rec = json.load(f)
      else:
        t1 = time.time()
        rec, imgs = _seed_record(name, seed, args, ddpm_dir, clf)
        rec["seconds"] = time.time() - t1
        if seed == use[0]:
          _save_grid(os.path.join(args.results, f"digits_{name}.png"), imgs)
        io.atomic_write_json(cache, rec)
      per_seed.append(rec)
      bar.update()
      tqdm.write(
        f"{name} seed {seed}: fd={rec['fd']:.3f} P={rec['precision']:.3f} R={rec['recall']:.3f} "
        f"tv={rec['class_tv']:.3f}"
        + (f" | best (step {rec['best']['step']}) fd={rec['best']['fd']:.3f}" if "best" in rec else "")
      )
    row = {"per_seed": per_seed, "summary": _summary(per_seed), "seconds_this_invocation": time.time() - t0}
    if name in DXMI_VARIANTS:
      row["summary_best"] = _summary([r["best"] for r in per_seed])
    result["rows"][name] = row
  bar.close()
  result["claims"] = claims(result["rows"])
  if any(n in result["rows"] for n in DXMI_VARIANTS):
    plot_curves(result["rows"], os.path.join(args.results, "digits_curves.png"))
  result["wall_seconds_this_invocation"] = time.time() - t_start
  io.atomic_write_json(out_json, result)
  with open(os.path.join(args.results, "table_digits.md"), "w") as f:
    f.write(markdown(result))
  print(markdown(result))
  return result


if __name__ == "__main__":
  main()
