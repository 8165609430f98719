"""Anomaly-detection table: DxMI against the autoencoder alone, the Langevin EBM, tau = 0 and kNN.

    python benchmarks/table_anomaly.py [--data_dir=benchmarks/data/adbench] [--features_dir=DIR]
        [--seeds=5] [--groups=classical,mvtec_resnet18,mvtec_unified,fmnist] [--methods=...]
        [--out=results/table_anomaly] [--workdir=/tmp/table_anomaly]

Every method with a network is a variant of ``configs/anomaly.py`` trained by the in-process
detector (``dxmi_jax/proj/anomaly/fit.py``: the train command's step, stages and data stream,
seeds vmapped):

* ``dxmi``:      the default (tables) or ``:sphere`` (embeddings, feature maps): the pretrained
                 autoencoder energy, trained as an EBM by DxMI's EV trainer;
* ``dxmi_tau0``: the same with tau1 = tau2 = 0 (``:tau0``);
* ``mcmc``:      the same pretrained energy trained with short-run Langevin negatives from the
                 same chain starts (``:mcmc``);
* ``ae_only``:   the pretrained autoencoder alone, no EBM training (``:ae_only``);
* ``iforest``, ``lof``, ``knn``, ``ocsvm``: scikit-learn (dxmi_jax/proj/anomaly/classical.py)
  on the same vectors the networks see.
No setting was chosen on any test split (configs/anomaly.py says how each was set).

Groups, with the protocol of each (per seed 0..seeds-1):
* ``classical``: the 10 ADBench tables under ``--data_dir/classical``: a seeded 70% of the
  normals train (``metrics.novelty_split``), the other normals and every anomaly test; z-scored
  with the training statistics.
* ``mvtec_resnet18``: the 10 MVTec-AD categories as ImageNet ResNet-18 embeddings, the same
  split, each vector on the unit sphere (variant ``sphere``); one model per category.
* ``mvtec_unified``: the same splits, one model trained on the training normals of all 10
  categories pooled (the authors' unified setting), AUROC per category, then their mean.
* ``fmnist``: Fashion-MNIST one-class on per-location backbone features (``--features_dir``:
  ``fashion_mnist_{train,test}.npz`` in the UniAD layout, written by
  ``python -m dxmi_jax.proj.anomaly.extract``; variant ``features``): per class, train on every
  location of that class's training maps, test on all test maps (that class normal, the others
  anomalous); the image score is the maximum over a map's locations, for every method.  OCSVM
  is left out there (an RBF SVM on tens of thousands of locations).
AUROC and AUPRC (anomaly = positive) as mean ± std over seeds.  The claims (DxMI above the
autoencoder alone, above the Langevin EBM, tau > 0 above tau = 0, and DxMI against kNN) compare
per-dataset means, and every (dataset, seed) pair of the two methods (the same split, or the same
data and training seed), with a two-sided sign test over those pairs.  Each (dataset, method) row
is cached in ``--workdir`` as it finishes, so a stopped run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
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
from dxmi_jax.proj.anomaly import classical, fit, metrics  # noqa: E402
from dxmi_jax.proj.anomaly import data as anomaly_data  # noqa: E402

EBM_METHODS = ("dxmi", "dxmi_tau0", "mcmc", "ae_only")
METHODS = EBM_METHODS + classical.METHODS
VARIANTS = {"dxmi": "", "dxmi_tau0": "tau0", "mcmc": "mcmc", "ae_only": "ae_only"}
LABELS = {
  "dxmi": "DxMI",
  "dxmi_tau0": "DxMI, τ=0",
  "mcmc": "EBM, Langevin",
  "ae_only": "autoencoder alone",
  "iforest": "IsolationForest",
  "lof": "LOF",
  "knn": "kNN (k=5)",
  "ocsvm": "OCSVM",
}
GROUPS = ("classical", "mvtec_resnet18", "mvtec_unified", "fmnist")
BASE_VARIANT = {"classical": "", "mvtec_resnet18": "sphere", "mvtec_unified": "sphere", "fmnist": "features"}
FMNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", default=os.path.join(REPO, "benchmarks", "data", "adbench"))
  p.add_argument("--features_dir", default="", help="Fashion-MNIST feature files (group fmnist)")
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--fmnist_seeds", type=int, default=3)
  p.add_argument("--groups", default=",".join(GROUPS))
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--datasets", default="", help="comma-separated dataset names (default: all)")
  p.add_argument("--iters", type=int, default=-1, help="EBM iterations (-1: the config's)")
  p.add_argument("--out", default=os.path.join(REPO, "results", "table_anomaly"))
  p.add_argument("--workdir", default="/tmp/table_anomaly", help="per-row cache")
  p.add_argument("--cached_only", action="store_true", help="compute nothing: tabulate the rows in --workdir")
  return p.parse_args(argv)


# ----------------------------------------------------------------------------- data
class Task:
  """One row of the table: per seed, transformed train rows, test rows and labels.

  ``groups_of`` (optional): per seed, the test rows' group (a category or image index) over
  which the score is reduced (max, per image) or split (per category AUROC).
  """

  def __init__(self, name, group, runs, reduce=None, categories=None):
    self.name, self.group, self.runs = name, group, runs
    self.reduce, self.categories = reduce, categories


def _split(x, y, seed, sphere):
  tr, te = metrics.novelty_split(y, seed)
  x = np.asarray(x, np.float64)
  if sphere:
    t = anomaly_data.SphereProjection(x.shape[1])
    return t(x[tr]), t(x[te]), y[te]
  mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8  # float64: IsolationForest's split points depend on the last bits
  return (x[tr] - mu) / sd, (x[te] - mu) / sd, y[te]


def adbench_tasks(data_dir, group, seeds):
  sub = {"classical": "classical", "mvtec_resnet18": "mvtec_resnet18", "mvtec_unified": "mvtec_resnet18"}[group]
  files = sorted(glob.glob(os.path.join(data_dir, sub, "*.npz")))
  if not files:
    raise SystemExit(f"error: --data_dir: no .npz files under {os.path.join(os.path.abspath(data_dir), sub)}")
  sphere = group != "classical"
  loaded = []
  for f in files:
    z = np.load(f)
    loaded.append((os.path.splitext(os.path.basename(f))[0], z["X"], z["y"].astype(np.int64)))
  if group != "mvtec_unified":
    return [Task(f"{group}/{n}", group, [_split(x, y, s, sphere) for s in range(seeds)]) for n, x, y in loaded]
  runs = []
  for s in range(seeds):
    parts = [(n,) + _split(x, y, s, True) for n, x, y in loaded]
    runs.append(
      (
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[3] for p in parts]),
        np.concatenate([[p[0]] * len(p[3]) for p in parts]),
      )
    )
  return [Task("mvtec_unified/all", group, runs, categories=[n for n, _, _ in loaded])]


def fmnist_tasks(features_dir, seeds):
  paths = [os.path.join(features_dir, f"fashion_mnist_{s}.npz") for s in ("train", "test")]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise SystemExit(
      f"error: --features_dir: {missing} not found (write them with python -m dxmi_jax.proj.anomaly.extract)"
    )
  train, test = (anomaly_data.load_feature_maps(p) for p in paths)
  tz, sz = (np.load(p, allow_pickle=True)["class_id"] for p in paths)
  sphere = anomaly_data.SphereProjection(train.features.shape[-1])
  n_test, h, w, c = test.features.shape
  test_rows = sphere(test.features.reshape(-1, c))
  image_of = np.repeat(np.arange(n_test), h * w)
  tasks = []
  for k in range(10):
    rows = sphere(train.features[tz == k].reshape(-1, c))
    label = (sz != k).astype(np.int64)
    # the seeds differ in training (initialisation, batches, noise); the data are the same
    tasks.append(Task(f"fmnist/{FMNIST_CLASSES[k]}", "fmnist", [(rows, test_rows, label, image_of)] * seeds))
    tasks[-1].reduce = "max"
  return tasks


# -------------------------------------------------------------------------- methods
_DETECTORS = {}


def detector(group, method, dim, iters):
  key = (group, method, dim, iters)
  if key not in _DETECTORS:
    variant = ",".join(v for v in (BASE_VARIANT[group], VARIANTS[method]) if v)
    c = anomaly_config.get_config(variant)
    if iters >= 0 and method != "ae_only":
      c.training.num_iters = iters
    _DETECTORS[key] = fit.Detector(c, dim)
  return _DETECTORS[key]


def _classical_scores(method, runs):
  """Per seed, the scores of a scikit-learn detector.

  A method with no randomness (kNN, LOF, OCSVM) gives the same scores for seeds that share their
  train and test arrays (the Fashion-MNIST classes), so it is fitted once for them.
  """
  out, done = [], {}
  for i, r in enumerate(runs):
    key = (id(r[0]), id(r[1]))
    if method in classical.DETERMINISTIC and key in done:
      out.append(done[key])
      continue
    out.append(classical.scores(method, r[0], r[1], seed=i))
    done[key] = out[-1]
  return out


def _reduce(scores, groups):
  """The max of the scores of each group (the image score of per-location scores)."""
  out = np.full(groups.max() + 1, -np.inf)
  np.maximum.at(out, groups, scores)
  return out


def run_row(task, method, iters):
  t0 = time.time()
  extra = {}
  if method in EBM_METHODS:
    det = detector(task.group, method, task.runs[0][0].shape[1], iters)
    states = det.fit([r[0] for r in task.runs], list(range(len(task.runs))))
    scores = [det.score(states, i, r[1]) for i, r in enumerate(task.runs)]
    extra = {"pretrain_s": det.pretrain_seconds, "fit_s": det.last_fit_seconds}
  else:
    scores = _classical_scores(method, task.runs)
  labels = [r[2] for r in task.runs]
  if task.reduce == "max":
    scores = [_reduce(s, r[3]) for s, r in zip(scores, task.runs)]
  out = {"seconds": time.time() - t0, **extra}
  if task.categories:  # per category, then the mean over categories
    per = {
      c: [metrics.auroc(l[r[3] == c], s[r[3] == c]) for s, l, r in zip(scores, labels, task.runs)]
      for c in task.categories
    }
    out["per_category_auroc"] = per
    out["auroc"] = [float(np.mean([per[c][i] for c in task.categories])) for i in range(len(task.runs))]
    out["auprc"] = [
      float(np.mean([metrics.auprc(l[r[3] == c], s[r[3] == c]) for c in task.categories]))
      for s, l, r in zip(scores, labels, task.runs)
    ]
  else:
    out["auroc"] = [metrics.auroc(l, s) for l, s in zip(labels, scores)]
    out["auprc"] = [metrics.auprc(l, s) for l, s in zip(labels, scores)]
  return out


# --------------------------------------------------------------------------- report
def applies(group, method):
  """Whether a method is part of a group's table: OCSVM is left out on Fashion-MNIST (an RBF SVM on
  tens of thousands of locations)."""
  return not (group == "fmnist" and method == "ocsvm")


def summarise(rows, tasks, methods):
  table, means = {}, {}
  for t in tasks:
    table[t.name] = {
      m: {f"{k}_{f}": float(getattr(np, f)(rows[(t.name, m)][k])) for k in ("auroc", "auprc") for f in ("mean", "std")}
      for m in methods
      if (t.name, m) in rows
    }
  for g in sorted({t.group for t in tasks}):
    ms = [m for m in methods if applies(g, m)]
    done = [t.name for t in tasks if t.group == g and all(m in table[t.name] for m in ms)]
    if done:
      means[g] = {
        m: {k: float(np.mean([table[n][m][f"{k}_mean"] for n in done])) for k in ("auroc", "auprc")} for m in ms
      }
      means[g]["n"], means[g]["of"] = len(done), sum(t.group == g for t in tasks)
  return table, means


CLAIMS = (
  ("DxMI above the autoencoder alone", "dxmi", "ae_only"),
  ("DxMI above the Langevin EBM", "dxmi", "mcmc"),
  ("τ > 0 above τ = 0", "dxmi", "dxmi_tau0"),
  ("DxMI against kNN", "dxmi", "knn"),
)


def sign_test(wins: int, losses: int) -> float:
  """Two-sided exact sign test: the probability, under a fair coin, of a split at least this uneven."""
  n, k = wins + losses, max(wins, losses)
  if n == 0:
    return 1.0
  return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2.0**n)


def claims(table, tasks, rows):
  """Per group and claim: the means of both sides over the datasets where both are finished, the
  datasets the first wins, and the seed-paired comparison.

  Seed i of a dataset is the same split (ADBench) or the same data and training seed (Fashion-MNIST)
  for every method, so each (dataset, seed) pair is one paired comparison: how many the first wins
  (ties left out), the mean paired difference, and the sign test's two-sided p over those pairs.
  """
  out = {}
  for g in sorted({t.group for t in tasks}):
    names = [t.name for t in tasks if t.group == g]
    out[g] = {}
    for label, a, b in CLAIMS:
      both = [n for n in names if a in table[n] and b in table[n]]
      if both:
        diffs = np.concatenate([np.subtract(rows[(n, a)]["auroc"], rows[(n, b)]["auroc"]) for n in both])
        won, lost = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
        out[g][label] = {
          "first": float(np.mean([table[n][a]["auroc_mean"] for n in both])),
          "second": float(np.mean([table[n][b]["auroc_mean"] for n in both])),
          "wins": int(sum(table[n][a]["auroc_mean"] > table[n][b]["auroc_mean"] for n in both)),
          "of": len(both),
          "seed_wins": won,
          "seed_pairs": int(diffs.size),
          "mean_paired_diff": float(np.mean(diffs)),
          "sign_p": sign_test(won, lost),
        }
  return out


def markdown(table, means, found, methods, meta):
  cell = lambda v: f"{v['auroc_mean']:.3f} ± {v['auroc_std']:.3f}"
  lines = [
    f"Anomaly detection, AUROC (mean ± std over seeds: {meta['seeds']}, Fashion-MNIST {meta['fmnist_seeds']}); "
    f"protocol in `benchmarks/table_anomaly.py`.",
    "",
    "| dataset | " + " | ".join(LABELS[m] for m in methods) + " |",
    "|---|" + "---|" * len(methods),
  ]
  for name, row in table.items():
    if row:  # datasets with no finished row yet are counted in the closing line, not listed
      lines.append(f"| {name} | " + " | ".join(cell(row[m]) if m in row else "—" for m in methods) + " |")
  for g, row in means.items():
    tag = "" if row["n"] == row["of"] else f" ({row['n']} of {row['of']} finished)"
    lines.append(
      f"| **mean, {g}**{tag} | " + " | ".join(f"**{row[m]['auroc']:.3f}**" if m in row else "—" for m in methods) + " |"
    )
  lines += [
    "",
    "Claims: the mean AUROC of each side over a group's datasets; the datasets where the first is higher;"
    " and, pairing each seed of a dataset with the same seed of the other method, the pairs the first wins,"
    " the mean paired difference and the two-sided sign test's p (ties left out):",
    "",
  ]
  lines += [
    "| group | claim | first | second | datasets won | seed pairs won | mean paired difference | sign test p |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for g, cl in found.items():
    for label, v in cl.items():
      lines.append(
        f"| {g} | {label} | {v['first']:.3f} | {v['second']:.3f} | {v['wins']} of {v['of']} | "
        f"{v['seed_wins']} of {v['seed_pairs']} | {v['mean_paired_diff']:+.4f} | {v['sign_p']:.2g} |"
      )
  lines += [
    "",
    f"Rows finished: {meta['rows_finished']} of {meta['rows_planned']}. Machine: {meta['machine']}; wall time "
    f"{meta['wall_minutes']:.1f} min for the rows computed by `{meta['command']}` (cached rows not counted; "
    f"the seconds of every row are in the JSON).",
  ]
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  bad = [m for m in methods if m not in METHODS]
  if bad:
    raise SystemExit(f"error: --methods: unknown {bad}; expected a subset of {METHODS}")
  groups = [g for g in args.groups.split(",") if g]
  bad = [g for g in groups if g not in GROUPS]
  if bad:
    raise SystemExit(f"error: --groups: unknown {bad}; expected a subset of {GROUPS}")
  tasks = []
  for g in groups:
    if g == "fmnist":
      if args.features_dir:
        tasks += fmnist_tasks(args.features_dir, args.fmnist_seeds)
      else:
        print("skipping group fmnist: no --features_dir", flush=True)
    else:
      tasks += adbench_tasks(args.data_dir, g, args.seeds)
  if args.datasets:
    keep = set(args.datasets.split(","))
    tasks = [t for t in tasks if t.name in keep or t.name.split("/")[-1] in keep]
  os.makedirs(args.workdir, exist_ok=True)
  t_start, load0 = time.time(), os.getloadavg()
  rows = {}
  try:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:  # progress bars are optional
    tqdm = None
  todo = [(t, m) for t in tasks for m in methods if applies(t.group, m)]
  bar = tqdm(todo, desc="rows", unit="row") if tqdm else todo
  for t, m in bar:
    seeds = len(t.runs)
    cache = os.path.join(args.workdir, f"{t.name.replace('/', '__')}__{m}__s{seeds}_i{args.iters}.json")
    if os.path.exists(cache):
      rows[(t.name, m)] = json.load(open(cache))
      continue
    if args.cached_only:
      continue
    if tqdm:
      bar.set_postfix_str(f"{t.name} {m} (compiling on first use)" if m in EBM_METHODS else f"{t.name} {m}")
    r = run_row(t, m, args.iters)
    rows[(t.name, m)] = r
    with open(cache + ".tmp", "w") as f:
      json.dump(r, f)
    os.replace(cache + ".tmp", cache)
    print(
      f"{t.name:28s} {m:10s} AUROC {np.mean(r['auroc']):.3f} ± {np.std(r['auroc']):.3f} ({r['seconds']:.0f} s)",
      flush=True,
    )
  table, means = summarise(rows, tasks, methods)
  found = claims(table, tasks, rows)
  meta = {
    "seeds": args.seeds,
    "fmnist_seeds": args.fmnist_seeds,
    "iters": args.iters,
    "methods": methods,
    "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
    f"({jax.default_backend()}), load average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f}",
    "command": "python benchmarks/table_anomaly.py " + " ".join(sys.argv[1:] if argv is None else argv),
    "rows_finished": len(rows),
    "rows_planned": len(todo),
    "wall_minutes": (time.time() - t_start) / 60.0,
    "row_seconds": {f"{n}|{m}": r["seconds"] for (n, m), r in rows.items()},
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  per_seed = {f"{n}|{m}": r for (n, m), r in rows.items()}
  with open(args.out + ".json", "w") as f:
    json.dump({"meta": meta, "table": table, "means": means, "claims": found, "per_seed": per_seed}, f, indent=1)
  with open(args.out + ".md", "w") as f:
    f.write(markdown(table, means, found, methods, meta))
  print(markdown(table, means, found, methods, meta))


if __name__ == "__main__":
  main()
