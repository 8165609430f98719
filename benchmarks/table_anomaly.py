"""Anomaly-detection table: DxMI-trained EBMs vs an MCMC-trained EBM, tau = 0 and sklearn baselines.

    python benchmarks/table_anomaly.py [--data_dir=../shared/data/adbench] [--seeds=5]
        [--iters=500] [--out=results/table_anomaly] [--workdir=/tmp/table_anomaly]

Every ``*.npz`` (``X``, ``y``; y = 1 anomaly) under ``--data_dir`` (recursively; the ADBench copy
has ``classical/`` and ``mvtec_resnet18/``).  Protocol, per dataset and seed 0..seeds-1:
a seeded 70% of the normals train (``np.random.default_rng(seed).permutation`` of the indices
where y == 0, the first int(0.7 n)); the remaining normals and every anomaly are the test set;
features standardised with the training split's mean and std (+1e-8).  Scores: higher = more
anomalous (energies for the EBMs).  AUROC and AUPRC (average precision, anomaly = positive) per
dataset as mean ± std over seeds, and the mean over datasets (per group and overall).

Methods:
* ``dxmi``:      configs/anomaly.py (the EV trainer), ``--iters`` iterations at batch 128;
* ``dxmi_tau0``: the same with tau1 = tau2 = 0;
* ``mcmc``:      the same energy network, optimiser and energy loss, negatives from persistent
                 Langevin chains (dxmi_jax/anomaly/mcmc.py), ``--iters`` iterations;
* ``iforest``, ``lof``, ``knn``, ``ocsvm``: dxmi_jax/anomaly/classical.py.
No hyper-parameter was tuned on any of these datasets (see configs/anomaly.py).

The seeds of one (dataset, method) train together as one vmapped program (one compile per
feature dimension and method); each (dataset, method) row is cached in ``--workdir`` as it
finishes, so a stopped run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

from configs import anomaly as anomaly_config  # noqa: E402
from dxmi_jax.anomaly import classical, fit, metrics  # noqa: E402
from dxmi_jax.anomaly import data as anomaly_data  # noqa: E402

EBM_METHODS = ("dxmi", "dxmi_tau0", "mcmc")
METHODS = EBM_METHODS + classical.METHODS
LABELS = {
  "dxmi": "DxMI (EV trainer)",
  "dxmi_tau0": "DxMI, tau=0",
  "mcmc": "EBM, Langevin MCMC",
  "iforest": "IsolationForest",
  "lof": "LOF (novelty)",
  "knn": "kNN (k=5, mean)",
  "ocsvm": "OCSVM",
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument(
    "--data_dir",
    default=os.path.join(REPO, "..", "shared", "data", "adbench"),
    help="folder of ADBench-format .npz files (searched recursively)",
  )
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--iters", type=int, default=500, help="training iterations of the EBMs")
  p.add_argument("--group_iters", default="", help="per-group iterations overriding --iters, e.g. mvtec_resnet18=200")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--datasets", default="", help="comma-separated dataset names (default: all)")
  p.add_argument(
    "--reverse",
    action="store_true",
    help="work through the datasets in reverse order (a second process sharing --workdir)",
  )
  p.add_argument(
    "--cached_ebm_only",
    action="store_true",
    help="train no EBM: tabulate the cached EBM rows (the sklearn rows are still computed)",
  )
  p.add_argument("--out", default=os.path.join(REPO, "results", "table_anomaly"))
  p.add_argument("--workdir", default="/tmp/table_anomaly", help="per-row cache")
  return p.parse_args(argv)


def datasets(data_dir):
  files = sorted(glob.glob(os.path.join(data_dir, "**", "*.npz"), recursive=True))
  if not files:
    raise SystemExit(
      f"error: --data_dir: no .npz files under {os.path.abspath(data_dir)} (the ADBench "
      f"copy lives in ../shared/data/adbench relative to the repository)"
    )
  out = []
  for f in files:
    group = os.path.basename(os.path.dirname(f))
    out.append((f"{group}/{os.path.splitext(os.path.basename(f))[0]}", group, f))
  return out


def splits(path, seeds):
  """Per seed: (train, test, test labels, train float64, test float64), standardised by the train split.

  The EBMs get float32; the sklearn baselines get the float64 arrays, exactly as
  ``../shared/tools/ad_baselines.py`` computes them (IsolationForest's random split points
  depend on the last bits, so this is what reproduces its seed-0 numbers).
  """
  z = np.load(path)
  x, y = z["X"].astype(np.float64), z["y"].astype(np.int64)
  runs = []
  for seed in range(seeds):
    tr, te = metrics.novelty_split(y, seed)
    st = anomaly_data.Standardizer.fit(x[tr])
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
    runs.append((st(x[tr]), st(x[te]), y[te], (x[tr] - mu) / sd, (x[te] - mu) / sd))
  return runs


_DETECTORS = {}


def detector(method, dim, iters):
  key = (method, dim, iters)
  if key not in _DETECTORS:
    c = anomaly_config.get_config("tau0" if method == "dxmi_tau0" else "")
    c.training.num_iters = iters
    _DETECTORS[key] = fit.MCMCDetector(c, dim) if method == "mcmc" else fit.DxMIDetector(c, dim)
  return _DETECTORS[key]


def run_row(method, runs, iters):
  t0 = time.time()
  if method in EBM_METHODS:
    det = detector(method, runs[0][0].shape[1], iters)
    t1 = time.time()
    states = det.fit([r[0] for r in runs], list(range(len(runs))))
    scores = [det.score(states, i, r[1]) for i, r in enumerate(runs)]
    extra = {"compile_and_build_s": t1 - t0, "fit_s": det.last_fit_seconds}
  else:
    scores = [classical.scores(method, r[3], r[4], seed=i) for i, r in enumerate(runs)]
    extra = {}
  return {
    "auroc": [metrics.auroc(r[2], s) for r, s in zip(runs, scores)],
    "auprc": [metrics.auprc(r[2], s) for r, s in zip(runs, scores)],
    "seconds": time.time() - t0,
    **extra,
  }


def union_seconds(walls):
  """Wall time covered by the invocations that computed rows (parallel ones counted once)."""
  spans = sorted((w["start"], w["end"]) for w in walls)
  total, cur = 0.0, None
  for a, b in spans:
    if cur is None or a > cur[1]:
      total += 0.0 if cur is None else cur[1] - cur[0]
      cur = [a, b]
    else:
      cur[1] = max(cur[1], b)
  return total + (0.0 if cur is None else cur[1] - cur[0])


def readme_seed0(data_dir):
  """The seed-0 sklearn AUROCs of the data folder's README table ({(set, method): value}), if any."""
  path = os.path.join(data_dir, "README.md")
  out = {}
  if not os.path.exists(path):
    return out
  for line in open(path):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 5 and cells[0] not in ("set", "") and not cells[1].startswith("-"):
      try:
        vals = [float(v) for v in cells[1:]]
      except ValueError:
        continue
      for m, v in zip(classical.METHODS, vals):
        out[(cells[0].replace("mvtec ", ""), m)] = v
  return out


def seed0_check(rows, data_dir):
  """Our seed-0 AUROC of each sklearn baseline next to the README's (3 decimals)."""
  ref = readme_seed0(data_dir)
  out = []
  for (name, m), r in sorted(rows.items()):
    key = (name.split("/")[-1], m)
    if key in ref:
      out.append(
        {
          "dataset": name,
          "method": m,
          "ours": round(r["auroc"][0], 4),
          "readme": ref[key],
          "match": bool(abs(r["auroc"][0] - ref[key]) <= 5e-4 + 1e-9),
        }
      )
  return out


def summarise(rows, names, methods):
  """{dataset: {method: {auroc_mean, ...}}} and, per group and overall, the means of the per-dataset
  means over the datasets on which every method finished (``n`` of ``of``: a stopped run's
  table still compares the methods on the same datasets)."""
  table = {}
  for name, _ in names:
    table[name] = {}
    for m in methods:
      r = rows.get((name, m))
      if r is not None:
        table[name][m] = {f"{k}_{f}": float(getattr(np, f)(r[k])) for k in ("auroc", "auprc") for f in ("mean", "std")}
  means = {}
  groups = sorted({g for _, g in names})
  for g in groups + ["all"]:
    members = [n for n, gg in names if g in ("all", gg)]
    done = [n for n in members if all(m in table[n] for m in methods)]
    if not done:
      continue
    means[g] = {
      m: {k: float(np.mean([table[n][m][f"{k}_mean"] for n in done])) for k in ("auroc", "auprc")} for m in methods
    }
    means[g]["n"], means[g]["of"] = len(done), len(members)
  return table, means


def claims(table, names):
  """The three comparisons the issue asks about, per group and overall: mean AUROC of each side and
  on how many datasets the first is above the second (per-dataset means over seeds)."""
  out = {}
  groups = sorted({g for _, g in names}) + ["all"]
  best = lambda row: max((row[m]["auroc_mean"], m) for m in classical.METHODS if m in row)
  for g in groups:
    members = [n for n, gg in names if g in ("all", gg)]
    rows = [table[n] for n in members if all(m in table.get(n, {}) for m in METHODS)]
    if not rows:
      continue
    pair = lambda a, b: {
      "first": float(np.mean([r[a]["auroc_mean"] for r in rows])),
      "second": float(np.mean([r[b]["auroc_mean"] for r in rows])),
      "wins": int(sum(r[a]["auroc_mean"] > r[b]["auroc_mean"] for r in rows)),
      "of": len(rows),
    }
    out[g] = {
      "dxmi_vs_mcmc": pair("dxmi", "mcmc"),
      "tau_vs_tau0": pair("dxmi", "dxmi_tau0"),
      "dxmi_vs_knn": pair("dxmi", "knn"),
      "dxmi_vs_best_classical_per_dataset": {
        "first": float(np.mean([r["dxmi"]["auroc_mean"] for r in rows])),
        "second": float(np.mean([best(r)[0] for r in rows])),
        "wins": int(sum(r["dxmi"]["auroc_mean"] > best(r)[0] for r in rows)),
        "of": len(rows),
      },
    }
  return out


def markdown(table, means, methods, meta):
  def cell(v, k):
    return f"{v[k + '_mean']:.3f} ± {v[k + '_std']:.3f}"

  lines = [
    f"Anomaly detection, {meta['seeds']} seeds, AUROC (AUPRC below); ADBench splits as in "
    f"`benchmarks/table_anomaly.py`.",
    "",
    "| dataset | " + " | ".join(LABELS[m] for m in methods) + " |",
    "|---|" + "---|" * len(methods),
  ]
  for name, row in table.items():
    lines.append(f"| {name} | " + " | ".join(cell(row[m], "auroc") if m in row else "—" for m in methods) + " |")

  def label(g, row, k):
    return f"**mean {k}, {g}**" + ("" if row["n"] == row["of"] else f" ({row['n']} of {row['of']} finished)")

  for g, row in means.items():
    lines.append(f"| {label(g, row, 'AUROC')} | " + " | ".join(f"**{row[m]['auroc']:.3f}**" for m in methods) + " |")
  lines += [
    "",
    "AUPRC:",
    "",
    "| dataset | " + " | ".join(LABELS[m] for m in methods) + " |",
    "|---|" + "---|" * len(methods),
  ]
  for name, row in table.items():
    lines.append(f"| {name} | " + " | ".join(cell(row[m], "auprc") if m in row else "—" for m in methods) + " |")
  for g, row in means.items():
    lines.append(f"| {label(g, row, 'AUPRC')} | " + " | ".join(f"**{row[m]['auprc']:.3f}**" for m in methods) + " |")
  over = ", ".join(f"{k}: {v}" for k, v in meta.get("group_iters", {}).items())
  lines += ["", f"EBM training: {meta['iters']} iterations at batch 128" + (f" ({over})" if over else "") + "."]
  chk = meta.get("seed0_check", [])
  if chk:
    lines += [
      "",
      f"Seed-0 sklearn AUROCs equal to the data README's table (to its 3 decimals): "
      f"{sum(c['match'] for c in chk)} of {len(chk)}.",
    ]
  lines += [
    "",
    f"Machine: {meta['machine']}; wall time {meta['wall_minutes']:.1f} min (first row to last, "
    f"over {meta['invocations']} invocation(s) that computed rows, parallel ones counted once); "
    f"`{meta['command']}`.",
  ]
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  bad = [m for m in methods if m not in METHODS]
  if bad:
    raise SystemExit(f"error: --methods: unknown {bad}; expected a subset of {METHODS}")
  names = datasets(args.data_dir)
  if args.datasets:
    keep = set(args.datasets.split(","))
    names = [n for n in names if n[0] in keep or n[0].split("/")[-1] in keep]
  os.makedirs(args.workdir, exist_ok=True)
  t_start = time.time()
  load0 = os.getloadavg()
  rows, computed = {}, 0
  # by feature dimension, so one compiled step per (method, D) serves consecutive datasets
  order = sorted(names, key=lambda n: np.load(n[2])["X"].shape[1])
  if args.reverse:
    order = order[::-1]
  group_iters = {k: int(v) for k, v in (kv.split("=") for kv in args.group_iters.split(",") if kv)}
  for name, group, path in order:
    runs = None
    iters = group_iters.get(group, args.iters)
    for m in methods:
      tag = f"i{iters}" if m in EBM_METHODS else "f64"  # the sklearn rows do not depend on iterations
      cache = os.path.join(args.workdir, f"{name.replace('/', '__')}__{m}__s{args.seeds}_{tag}.json")
      if os.path.exists(cache):
        rows[(name, m)] = json.load(open(cache))
        continue
      if args.cached_ebm_only and m in EBM_METHODS:
        continue
      runs = runs or splits(path, args.seeds)
      r = run_row(m, runs, iters)
      rows[(name, m)] = r
      computed += 1
      with open(cache + ".tmp", "w") as f:
        json.dump(r, f)
      os.replace(cache + ".tmp", cache)
      print(
        f"{name:28s} {m:10s} AUROC {np.mean(r['auroc']):.3f} ± {np.std(r['auroc']):.3f}  "
        f"AUPRC {np.mean(r['auprc']):.3f}  ({r['seconds']:.0f} s)",
        flush=True,
      )
  wall = time.time() - t_start
  log_path = os.path.join(args.workdir, f"wall_s{args.seeds}.jsonl")
  if computed:
    with open(log_path, "a") as f:
      f.write(
        json.dumps(
          {
            "start": t_start,
            "end": time.time(),
            "wall_s": wall,
            "rows": computed,
            "load_start": load0[0],
            "load_end": os.getloadavg()[0],
          }
        )
        + "\n"
      )
  walls = [json.loads(l) for l in open(log_path)] if os.path.exists(log_path) else []
  table, means = summarise(rows, [(n, g) for n, g, _ in names], methods)
  meta = {
    "seeds": args.seeds,
    "iters": args.iters,
    "group_iters": group_iters,
    "methods": methods,
    "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
    f"({jax.default_backend()}), load average at start {load0[0]:.1f}, at end "
    f"{os.getloadavg()[0]:.1f}",
    "command": "python benchmarks/table_anomaly.py " + " ".join(sys.argv[1:] if argv is None else argv),
    "wall_minutes": union_seconds(walls) / 60.0,
    "invocations": len(walls),
    "row_seconds": {f"{n}|{m}": r["seconds"] for (n, m), r in rows.items()},
    "data_dir": os.path.abspath(args.data_dir),
    "seed0_check": seed0_check(rows, args.data_dir),
  }
  per_seed = {f"{n}|{m}": r for (n, m), r in rows.items()}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  found = claims(table, [(n, g) for n, g, _ in names])
  with open(args.out + ".json", "w") as f:
    json.dump({"meta": meta, "table": table, "means": means, "claims": found, "per_seed": per_seed}, f, indent=1)
  with open(args.out + ".md", "w") as f:
    f.write(markdown(table, means, methods, meta))
  print(markdown(table, means, methods, meta))


if __name__ == "__main__":
  main()
