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

The τ study (entropy weight τ1 and velocity weight τ2, chosen on validation only):

  dxmi_t4_tau<k>         T=4 with (τ1, τ2) = k × (0.1, 0.01) for k in TAU_GRID = 0, 0.3, 1, 3
                         (config variant ``t4,tauscale=<k>``; k = 1 is the headline dxmi_t4 config and
                         trains in its folders, dxmi_t4_s<seed>; k = 0 is the τ=0 row at T=4)
  dxmi_t4_tau_selected   the grid row whose k has the smallest mean over seeds of each run's best
                         validation FD (the minimum of the run's val evaluations); a tie goes to the
                         smaller k.  Needs every grid run of --seeds finished; the test split plays
                         no part in the choice
  dxmi_t10_tau_selected  T=10 at the selected k (variant ``tauscale=<k>``; k = 0 or 1 reuse the folders
                         of dxmi_t10_tau0 or dxmi_t10, which have that config)
  dxmi_t10_tau0          (as above) the T=10 τ=0 row
  dxmi_t10_vlrq, dxmi_t10_lrhalf   the two T=10 overshoot variants to run on val next
                         (configs/digits.py ``vlr_quarter``, ``lr_half``); not part of the τ study

Each DxMI row records its ``tau`` (scale, tau1, tau2), config variant and run folders.  With any τ
row in --rows, the JSON gains ``tau_study`` (every grid run's best val FD and the selection) and
``tau_comparison`` (test FD at the best-on-val checkpoint, selected τ against τ=0, seed by seed),
and results/digits_tau_val.png (best val FD against τ1) and results/digits_tau_sigmas.png (the σ's
over training for every τ of the grid, the selected one marked) are drawn.  ``--tau_val`` reports
the grid on val alone, finished or not, without reading the test split; ``--traces`` summarises
the DxMI runs of --rows from their training traces alone (val FD at the start, at 100, best and
last; per iteration window the energy gap, TD loss, policy gradient norm and σ₀: the T=10
overshoot analysis).  With --train_only the runs go seed-major (every row's seed 0, then seed 1,
...), so that partial results cover the whole grid:

    W=/path/outside/the/checkout
    taskset -c 1 python benchmarks/table_digits.py --workdir=$W --train_only \
        --rows=dxmi_t4_tau0,dxmi_t4_tau0.3,dxmi_t4_tau1,dxmi_t4_tau3
    python benchmarks/table_digits.py --workdir=$W --tau_val
    taskset -c 1 python benchmarks/table_digits.py --workdir=$W --train_only \
        --rows=dxmi_t10_tau0,dxmi_t10_tau_selected
    python benchmarks/table_digits.py --workdir=$W --merge \
        --rows=dxmi_t4_tau0,dxmi_t4_tau0.3,dxmi_t4_tau1,dxmi_t4_tau3,dxmi_t4_tau_selected,dxmi_t10_tau0,dxmi_t10_tau_selected

``--merge`` keeps the rows of the existing results/table_digits.json that the invocation does not
compute (the headline rows stay as they are).  --train_only skips a run that has finished and writes
benchmark_train.json into each run it trains (wall and CPU seconds of that invocation, and the step it
resumed from).  Where the study's runs are and how far they got: results/table_digits_tau.md.

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

TAU_GRID = (0.0, 0.3, 1.0, 3.0)  # scales k of (tau1, tau2) = k * (0.1, 0.01); k = 1: the headline rows' point


def _k(k):
  return f"{k:g}"


TAU_ROWS_T4 = tuple(f"dxmi_t4_tau{_k(k)}" for k in TAU_GRID)
ROW_ORDER = (
  "ddpm1000",
  "var_t10",
  "ddim_t10",
  "dxmi_t10",
  "dxmi_t10_tau0",
  "dxmi_t10_tau_selected",
  "dxmi_t10_vlrq",
  "dxmi_t10_lrhalf",
  "var_t4",
  "ddim_t4",
  "dxmi_t4",
  *TAU_ROWS_T4,
  "dxmi_t4_tau_selected",
  "data",
)
LABELS = {
  "ddpm1000": "DDPM (pretrained), T=1000",
  "var_t10": "VAR ancestral (pretrained), T=10",
  "ddim_t10": "DDIM (pretrained), T=10",
  "dxmi_t10": "**DxMI**, T=10",
  "dxmi_t10_tau0": "DxMI, T=10, τ=0",
  "dxmi_t10_tau_selected": "DxMI, T=10, τ selected on val (T=4 grid)",
  "dxmi_t10_vlrq": "DxMI, T=10, value learning rate / 4",
  "dxmi_t10_lrhalf": "DxMI, T=10, learning rates / 2",
  "var_t4": "VAR ancestral (pretrained), T=4",
  "ddim_t4": "DDIM (pretrained), T=4",
  "dxmi_t4": "**DxMI**, T=4",
  **{f"dxmi_t4_tau{_k(k)}": f"DxMI, T=4, τ = {_k(k)} × (0.1, 0.01)" for k in TAU_GRID},
  "dxmi_t4_tau_selected": "DxMI, T=4, τ selected on val",
  "data": "real fit images (metric floor)",
}
NFE = {n: 1000 if n == "ddpm1000" else "–" if n == "data" else int(n.split("_t")[1].split("_")[0]) for n in ROW_ORDER}
# config variants of the DxMI rows (configs/digits.py); the *_tau_selected rows get theirs from the τ study
DXMI_VARIANTS = {
  "dxmi_t10": "",
  "dxmi_t10_tau0": "tau0",
  "dxmi_t10_tau_selected": None,
  "dxmi_t10_vlrq": "vlr_quarter",
  "dxmi_t10_lrhalf": "lr_half",
  "dxmi_t4": "t4",
  **{f"dxmi_t4_tau{_k(k)}": f"t4,tauscale={_k(k)}" for k in TAU_GRID},
  "dxmi_t4_tau_selected": None,
}
# rows whose config equals another row's train in that row's folders (no run twice)
RUN_ALIAS = {"dxmi_t4_tau1": "dxmi_t4"}
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
    "--tau_val",
    action="store_true",
    help="only report the T=4 τ grid on validation (finished runs or not): results/table_digits_tau_val.json, "
    "results/digits_tau_val.png, results/digits_tau_sigmas.png; reads no test data, trains nothing",
  )
  p.add_argument(
    "--traces",
    action="store_true",
    help="only summarise the training traces of the DxMI rows of --rows (val FD, energy gap, TD loss, policy "
    "gradient norm, sigma_0 per window): results/table_digits_traces.json; reads no test data, trains nothing",
  )
  p.add_argument(
    "--merge",
    action="store_true",
    help="keep the rows of the existing results/table_digits.json that this invocation does not compute",
  )
  p.add_argument(
    "--train_only",
    action="store_true",
    help="only run (or resume) the DxMI fine-tuning of --rows x --seeds; several such processes may run at once",
  )
  return p.parse_args(argv)


def _save_grid(path, images_uint8, scale=4):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from dxmi_jax import image_export  # pylint: disable=import-outside-toplevel

  grid = image_export.make_grid(images_uint8[:64], nrow=8, padding=1)[..., 0]
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
  policy = build_policy({"policy": section}, exp.policy.net)
  return policy, {"net": params["net"], "log_sigma": np.asarray(policy.init_log_sigma())}


def dxmi_run_dir(workdir, name, seed):
  return os.path.join(workdir, f"{name}_s{seed}")


class UsageError(Exception):
  """A bad option or a row that cannot be run yet: one ``error:`` line, exit status 2."""


# --------------------------------------------------------------------------- the τ study
SELECTION_RULE = (
  "the tau scale with the smallest mean over seeds of each run's best validation FD "
  "(digits FD against the val split, the minimum over the run's evaluations); a tie goes to the smaller tau"
)


def select_tau(best_val):
  """The selection rule on ``{scale: [best val FD of each seed]}``: (selected scale, {scale: mean}).

  Every scale must carry the same, non-zero number of seeds (a mean over fewer seeds is no comparison).
  The smallest mean wins; exact ties go to the smaller scale.
  """
  if not best_val:
    raise ValueError("select_tau: no tau scales")
  counts = {len(v) for v in best_val.values()}
  if len(counts) != 1 or 0 in counts:
    raise ValueError(f"select_tau: every tau scale needs the same non-zero number of seeds, got {sorted(counts)}")
  bad = [k for k, v in best_val.items() if not np.all(np.isfinite(np.asarray(v, np.float64)))]
  if bad:
    raise ValueError(f"select_tau: non-finite validation FD for tau scale(s) {sorted(bad)}")
  means = {float(k): float(np.mean(np.asarray(v, np.float64))) for k, v in best_val.items()}
  return min(means, key=lambda k: (means[k], k)), means


def _num_iters(variant, args):
  return args.dxmi_iters if args.dxmi_iters > 0 else int(_config(variant or "").training.num_iters)


def run_status(run_dir, num_iters):
  """(best val FD, its step, last trained step, finished?) of a DxMI run folder, from its metrics.jsonl."""
  from dxmi_jax import writers  # pylint: disable=import-outside-toplevel

  path = os.path.join(run_dir, "metrics.jsonl")
  recs = writers.read_jsonl(path) if os.path.exists(path) else []
  evals = [(r["digits_fd"], r["step"]) for r in recs if r.get("kind") == "eval" and r.get("digits_fd") is not None]
  steps = [r["step"] for r in recs if r.get("kind") == "train"]
  last = max(steps) if steps else 0
  # finished: trained to num_iters (its final evaluation logged and the --train_only marker written),
  # or its last checkpoint is num_iters
  last_eval = max((s for _, s in evals), default=-1)
  marker = os.path.exists(os.path.join(run_dir, "benchmark_train.json"))
  done = (marker and last_eval >= num_iters) or _last_checkpoint(run_dir) >= num_iters
  best = min(evals) if evals else (None, None)
  return {"best_val_fd": best[0], "best_step": best[1], "last_step": last, "finished": bool(done)}


def _last_checkpoint(run_dir):
  if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
    return -1
  from dxmi_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel

  steps = ckpt_lib.committed_steps(run_dir)
  return steps[-1] if steps else -1


def tau_study(workdir, seeds, args):
  """The T=4 τ grid on validation only: each run's best val FD, and the selected scale once every run finished."""
  from configs import digits as digits_cfg  # pylint: disable=import-outside-toplevel

  grid = []
  for k in TAU_GRID:
    row = f"dxmi_t4_tau{_k(k)}"
    iters = _num_iters(DXMI_VARIANTS[row], args)
    runs = {}
    for seed in seeds:
      runs[str(seed)] = run_status(dxmi_run_dir(workdir, RUN_ALIAS.get(row, row), seed), iters)
      runs[str(seed)]["run"] = f"{RUN_ALIAS.get(row, row)}_s{seed}"
    done = [r["best_val_fd"] for r in runs.values() if r["finished"]]
    grid.append(
      {
        "row": row,
        "scale": k,
        "tau1": digits_cfg.TAU1 * k,
        "tau2": digits_cfg.TAU2 * k,
        "runs": runs,
        "finished": len(done) == len(seeds),
        "mean_best_val_fd_finished": float(np.mean(done)) if done else None,
      }
    )
  out = {"rule": SELECTION_RULE, "seeds": list(seeds), "grid": grid, "selected_scale": None, "means": None}
  out["complete"] = all(g["finished"] for g in grid)
  if out["complete"]:
    sel, means = select_tau({g["scale"]: [g["runs"][str(s)]["best_val_fd"] for s in seeds] for g in grid})
    out["selected_scale"], out["means"] = sel, {_k(k): v for k, v in means.items()}
  return out


def resolve_row(name, args, seeds):
  """(config variant, run-folder name, tau scale or None) of a DxMI row; the selected rows need the finished grid."""
  if DXMI_VARIANTS[name] is not None:
    from configs import digits as digits_cfg  # pylint: disable=import-outside-toplevel

    scale = round(float(_config(DXMI_VARIANTS[name]).dxmi.tau1) / digits_cfg.TAU1, 6)
    return DXMI_VARIANTS[name], RUN_ALIAS.get(name, name), scale
  study = tau_study(args.workdir, seeds, args)
  if not study["complete"]:
    missing = [r["run"] for g in study["grid"] for r in g["runs"].values() if not r["finished"]]
    raise UsageError(
      f"--rows: {name} needs the finished T=4 tau grid on seeds {','.join(map(str, seeds))} under "
      f"{args.workdir}; unfinished: {', '.join(missing)} (run --train_only --rows={','.join(TAU_ROWS_T4)} first)"
    )
  k = study["selected_scale"]
  if name == "dxmi_t4_tau_selected":
    return resolve_row(f"dxmi_t4_tau{_k(k)}", args, seeds)
  # T=10 at the selected scale: the folders of the T=10 row with the same config where there is one
  run = {0.0: "dxmi_t10_tau0", 1.0: "dxmi_t10"}.get(k, f"dxmi_t10_tau{_k(k)}")
  return f"tauscale={_k(k)}", run, k


def dxmi_train(ddpm_dir, workdir, variant, run, seed, iters):
  """Fine-tunes (or resumes, or reuses) the DxMI run folder <run>_s<seed>; returns it and the seconds."""
  run_dir = dxmi_run_dir(workdir, run, seed)
  over = dict(init__policy_checkpoint=ddpm_dir, training__seed=seed)
  if iters > 0:
    over["training__num_iters"] = iters
  t0 = time.time()
  modes.run(_config(variant, **over), run_dir, "train")
  return run_dir, time.time() - t0


def dxmi_samplers(variant, run_dir):
  """{"last": (policy, params, step), "best": ...} of a finished DxMI run (best by the val metric)."""
  from dxmi_jax import checkpoint as ckpt_lib, experiment  # pylint: disable=import-outside-toplevel

  exp = experiment.build(_config(variant))
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
    # the overshoot study's traces (absent from runs logged before these keys existed)
    "v_loss": [r.get("ebm/v_loss") for r in train],
    "ebm_grad_norm": [r.get("ebm/grad_norm") for r in train],
    "policy_grad_norm": [r.get("sampler/grad_norm") for r in train],
    "eval_step": [r["step"] for r in evals],
    "val_fd": [r["digits_fd"] for r in evals],
  }


def generate(policy, params, num, seed, batch=500):
  from dxmi_jax import generation, image_export  # pylint: disable=import-outside-toplevel

  bs = min(batch, num)
  gen = generation.make_generator(policy, (8, 8, 1), bs)
  return image_export.to_uint8(generation.sample_many(gen, params, seed, num, bs), "round")


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
  tau_rows = [(n, r) for n, r in result["rows"].items() if "tau" in r]
  if tau_rows:
    lines += ["", "| DxMI row | τ1 | τ2 | config variant | run folders |", "|---|---:|---:|---|---|"]
    for name, row in tau_rows:
      lines.append(
        f"| {name} | {row['tau']['tau1']:g} | {row['tau']['tau2']:g} | `{row.get('variant', '')}` | {row.get('run', name)}_s* |"
      )
  if result.get("tau_study"):
    lines += ["", "τ grid at T=4, on the val split only (selection rule: " + result["tau_study"]["rule"] + "):", ""]
    lines.append(tau_report(result["tau_study"]).rstrip("\n"))
  if result.get("tau_comparison"):
    lines += ["", "| T | seed | test FD, τ selected (best on val) | test FD, τ=0 (best on val) | selected < τ=0 |"]
    lines.append("|---:|---:|---:|---:|---|")
    for c in result["tau_comparison"]:
      lines.append(
        f"| {c['T']} | {c['seed']} | {c['selected']:.2f} | {c['tau0']:.2f} | {'same runs' if c['same_runs'] else 'yes' if c['selected_wins'] else 'no'} |"
      )
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
    ("DxMI T=4, τ selected on val < τ=0", "dxmi_t4_tau_selected", "dxmi_t4_tau0"),
    ("DxMI T=10, τ selected on val < τ=0", "dxmi_t10_tau_selected", "dxmi_t10_tau0"),
  ]
  out = []
  for text, a, b in tests:
    cell = {"claim": text}
    for which in ("last", "best"):
      if a not in rows or b not in rows:
        cell[which] = "not run"
        continue
      if rows[a].get("run") is not None and rows[a].get("run") == rows[b].get("run"):
        cell[which] = "the same runs (τ=0 selected)"
        continue
      fa, fb = _fd_by_seed(rows[a], which), _fd_by_seed(rows[b], which if b in DXMI_VARIANTS else "last")
      seeds = sorted(set(fa) & set(fb))
      wins = sum(fa[s] < fb[s] for s in seeds)
      cell[which] = f"{'holds' if wins == len(seeds) else 'fails'} ({wins}/{len(seeds)} seeds)"
      wa, wb = rows[a].get("workdir"), rows[b].get("workdir")
      if wa != wb:  # e.g. a row kept by --merge from an earlier invocation
        cell[which] += f" [different workdirs: {wa or 'unknown'} vs {wb or 'unknown'}]"
    out.append(cell)
  return out


def plot_curves(rows, path):
  """Validation FD, mean energies of data and samples, and the sigmas against iterations."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  names = [n for n in DXMI_VARIANTS if n in rows and n not in TAU_ROWS_T4]  # the grid: digits_tau_*.png
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


def _tau(variant, scale):
  c = _config(variant or "")
  return {"scale": scale, "tau1": float(c.dxmi.tau1), "tau2": float(c.dxmi.tau2)}


def _seed_record(name, seed, args, ddpm_dir, clf, resolved=None):
  """One (row, seed) record against the test split, with its sample images."""
  from dxmi_jax.data import digits as digits_data  # pylint: disable=import-outside-toplevel

  rec = {"seed": seed}
  if name == "data":
    imgs, _ = digits_data.digits_arrays("fit")
    imgs = imgs[np.random.default_rng(seed).choice(len(imgs), args.num_samples, replace=False)]
  elif name in DXMI_VARIANTS:
    variant, run, scale = resolved
    run_dir, secs = dxmi_train(ddpm_dir, args.workdir, variant, run, seed, args.dxmi_iters)
    samplers = dxmi_samplers(variant, run_dir)
    for which in ("best", "last"):
      policy, params, step = samplers[which]
      imgs = generate(policy, params, args.num_samples, 1000 + seed)
      m = clf.evaluate(imgs, "test")
      m["step"] = int(step)
      m["sigma"] = [float(v) for v in np.exp(np.asarray(params["log_sigma"]))]
      if which == "best":
        rec["best"] = m
    rec.update(m)
    rec.update(variant=variant, run=run, tau=_tau(variant, scale))
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


def _seed_list(text, what):
  try:
    out = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise UsageError(f"{what}: expected comma-separated integer seeds, got {text!r}") from None
  if not out:
    raise UsageError(f"{what}: no seeds in {text!r}")
  return out


def tau_report(study):
  """The τ grid on val as markdown (one line per scale, one column per seed; * = unfinished run)."""
  seeds = study["seeds"]
  lines = [
    "| τ scale k | τ1 | τ2 | " + " | ".join(f"best val FD, seed {s} (step)" for s in seeds) + " | mean (finished) |",
    "|---:|---:|---:|" + "---:|" * (len(seeds) + 1),
  ]
  for g in study["grid"]:
    cells = []
    for s in seeds:
      r = g["runs"][str(s)]
      if r["best_val_fd"] is None:
        cells.append("–")
      else:
        star = "" if r["finished"] else f"* (at {r['last_step']})"
        cells.append(f"{r['best_val_fd']:.2f} ({r['best_step']}){star}")
    mean = g["mean_best_val_fd_finished"]
    lines.append(
      f"| {_k(g['scale'])} | {g['tau1']:g} | {g['tau2']:g} | "
      + " | ".join(cells)
      + f" | {'–' if mean is None else f'{mean:.2f}'} |"
    )
  sel = study["selected_scale"]
  lines.append("")
  lines.append(
    f"Selected on val: k = {_k(sel)}."
    if sel is not None
    else "Not selected yet: the grid has unfinished (*) or unstarted (–) runs."
  )
  return "\n".join(lines) + "\n"


def tau_comparison(rows):
  """Test FD at the best-on-val checkpoint, selected τ against τ = 0, seed by seed, at T=4 and T=10."""
  out = []
  for T in (4, 10):
    a, b = f"dxmi_t{T}_tau_selected", f"dxmi_t{T}_tau0"
    if a not in rows or b not in rows:
      continue
    fa, fb = _fd_by_seed(rows[a], "best"), _fd_by_seed(rows[b], "best")
    same = rows[a].get("run") == rows[b].get("run")  # τ=0 selected: one set of runs
    for seed in sorted(set(fa) & set(fb)):
      out.append(
        {
          "T": T,
          "seed": seed,
          "selected": fa[seed],
          "tau0": fb[seed],
          "selected_wins": fa[seed] < fb[seed],
          "same_runs": same,
        }
      )
  return out


def plot_tau(study, path):
  """Best validation FD of every run against τ1 (per seed, mean of finished runs), the selection marked."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(6, 4))
  for i, seed in enumerate(study["seeds"]):
    pts = [(g["tau1"], g["runs"][str(seed)]) for g in study["grid"] if g["runs"][str(seed)]["best_val_fd"] is not None]
    for x, r in pts:
      ax.plot(x, r["best_val_fd"], "o", color=f"C{i}", mfc=f"C{i}" if r["finished"] else "none")
    ax.plot([], [], "o", color=f"C{i}", label=f"seed {seed}")
  means = [(g["tau1"], g["mean_best_val_fd_finished"]) for g in study["grid"] if g["finished"]]
  if means:
    ax.plot(*zip(*means), "k-", label="mean over seeds")
  if study["selected_scale"] is not None:
    g = next(g for g in study["grid"] if g["scale"] == study["selected_scale"])
    ax.plot(g["tau1"], g["mean_best_val_fd_finished"], "r*", ms=14, label="selected")
  ax.set_xscale("symlog", linthresh=0.01)
  ax.set(xlabel="τ1 (τ2 = τ1 / 10)", ylabel="best digits FD on val", title="DxMI T=4: the τ grid (hollow: unfinished)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def tau_sigma_runs(workdir, study, seed, t10=None):
  """{panel title: run folder} of the σ plot: every scale of the T=4 grid (the selected one marked), so
  that τ = 0 is compared with τ > 0 whichever scale is selected; then the T=10 rows of ``t10``
  ({row: run name}) whose runs differ."""
  runs = {}
  for k in TAU_GRID:
    row = f"dxmi_t4_tau{_k(k)}"
    mark = " (selected)" if k == study["selected_scale"] else ""
    runs[f"T=4, k = {_k(k)}{mark}, seed {seed}"] = dxmi_run_dir(workdir, RUN_ALIAS.get(row, row), seed)
  for name, run in (t10 or {}).items():
    path = dxmi_run_dir(workdir, run, seed)
    if path not in runs.values():
      runs[f"{LABELS[name]}, seed {seed}"] = path
  return runs


def plot_tau_sigmas(runs, path):
  """The sigmas over training of the given {label: run folder} (sampling order, log scale)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.4), squeeze=False, sharey=True)
  for ax, (label, run_dir) in zip(axes[0], runs.items()):
    c = learning_curves(run_dir) if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) else None
    sig = np.asarray(c["sigma"], np.float64) if c and c["sigma"] else np.zeros((0, 0))
    for t in range(sig.shape[1] if sig.ndim == 2 else 0):
      ax.plot(c["train_step"], sig[:, t], label=f"σ_{t}")
    ax.set(title=label, xlabel="iteration", yscale="log")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


# iteration windows of the trace summary: the value's first phase, the approach, the late phase
TRACE_WINDOWS = ((0, 150), (150, 1000), (1000, None))


def _mean_at(values, idx):
  v = [values[i] for i in idx if values[i] is not None]
  return float(np.mean(v)) if v else None


def trace_summary(run_dir):
  """What the overshoot analysis reads from one run's training traces (val split and training only).

  Val FD at the start, at iteration 100, at its best and at the end; then per TRACE_WINDOWS window
  the mean energy gap E(samples) - E(data), the TD loss logged as ebm/v_loss (the iteration's first
  TD update, as the official trainer logs it), the policy and energy gradient
  norms, and sigma_0 (the first, noisiest step) at the window's end.
  """
  c = learning_curves(run_dir)
  if not c["val_fd"]:
    return None
  fd = dict(zip(c["eval_step"], c["val_fd"]))
  best_step = min(fd, key=fd.get)
  last_step = max(fd)
  gap = [None if (a is None or b is None) else b - a for a, b in zip(c["pos_e"], c["neg_e"])]
  sigma0 = [s[0] if s else None for s in c["sigma"]]
  windows = []
  for lo, hi in TRACE_WINDOWS:
    inside = [i for i, s in enumerate(c["train_step"]) if s >= lo and (hi is None or s < hi)]
    windows.append(
      {
        "from": lo,
        "to": hi,
        "energy_gap": _mean_at(gap, inside),
        "v_loss": _mean_at(c["v_loss"], inside),
        "policy_grad_norm": _mean_at(c["policy_grad_norm"], inside),
        "ebm_grad_norm": _mean_at(c["ebm_grad_norm"], inside),
        "sigma0_end": sigma0[inside[-1]] if inside else None,
      }
    )
  return {
    "val_fd_start": fd.get(0),
    "val_fd_100": fd.get(100),
    "best_val_fd": fd[best_step],
    "best_step": best_step,
    "last_val_fd": fd[last_step],
    "last_step": last_step,
    "overshoot": fd[last_step] - fd[best_step],
    "sigma0_start": sigma0[0] if sigma0 else None,
    "windows": windows,
  }


def traces_report(summaries):
  """{(row, seed): trace_summary} as markdown: val FD, then the windows' energy gap, TD loss and sigma_0."""

  def f(x, d=2):
    return "–" if x is None else f"{x:.{d}f}"

  heads = [f"{lo}–{'end' if hi is None else hi}" for lo, hi in TRACE_WINDOWS]
  lines = [
    "| run | val FD: start, 100, best (step), last | overshoot | energy gap "
    + " / ".join(heads)
    + " | TD loss "
    + " / ".join(heads)
    + " | policy grad norm "
    + " / ".join(heads)
    + " | σ₀ start → "
    + " / ".join(heads)
    + " |",
    "|---|---|---:|---|---|---|---|",
  ]
  for (row, seed), s in summaries.items():
    w = s["windows"]
    lines.append(
      f"| {row} s{seed} | {f(s['val_fd_start'], 1)}, {f(s['val_fd_100'], 1)}, {f(s['best_val_fd'], 1)} "
      f"({s['best_step']}), {f(s['last_val_fd'], 1)} | {f(s['overshoot'], 1)} | "
      + " / ".join(f(x["energy_gap"]) for x in w)
      + " | "
      + " / ".join(f(x["v_loss"], 3) for x in w)
      + " | "
      + " / ".join(f(x["policy_grad_norm"], 3) for x in w)
      + f" | {f(s['sigma0_start'], 3)} → "
      + " / ".join(f(x["sigma0_end"], 3) for x in w)
      + " |"
    )
  return "\n".join(lines) + "\n"


def write_traces(args, seeds, rows):
  """--traces: the training-trace summary of the DxMI rows of --rows (no test split is read, nothing trains)."""
  summaries = {}
  for name in rows:
    if name not in DXMI_VARIANTS:
      continue
    _, run, _ = resolve_row(name, args, seeds)
    for seed in seeds:
      run_dir = dxmi_run_dir(args.workdir, run, seed)
      s = trace_summary(run_dir) if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) else None
      if s is not None:
        summaries[(name, seed)] = dict(s, run=os.path.basename(run_dir))
  os.makedirs(args.results, exist_ok=True)
  io.atomic_write_json(
    os.path.join(args.results, "table_digits_traces.json"),
    {"windows": TRACE_WINDOWS, "runs": [dict(v, row=r, seed=sd) for (r, sd), v in summaries.items()]},
  )
  print(traces_report(summaries))
  return summaries


def write_tau_val(args, seeds):
  """--tau_val: the T=4 τ grid on validation only (finished or not), its plots; no test split is read."""
  study = tau_study(args.workdir, seeds, args)
  os.makedirs(args.results, exist_ok=True)
  io.atomic_write_json(os.path.join(args.results, "table_digits_tau_val.json"), study)
  plot_tau(study, os.path.join(args.results, "digits_tau_val.png"))
  plot_tau_sigmas(tau_sigma_runs(args.workdir, study, seeds[0]), os.path.join(args.results, "digits_tau_sigmas.png"))
  print(tau_report(study))
  return study


def main(argv=None):
  try:
    return _main(argv)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _main(argv=None):
  args = _args(argv)
  seeds = _seed_list(args.seeds, "--seeds")
  rows = [r for r in args.rows.split(",") if r]
  row_seeds = {}
  for item in filter(None, args.row_seeds.split(";")):
    name, _, spec = item.partition("=")
    row_seeds[name.strip()] = _seed_list(spec, f"--row_seeds ({name.strip()})")
  bad = [r for r in list(rows) + list(row_seeds) if r not in ROW_ORDER]
  if bad:
    raise UsageError(f"--rows: unknown {bad}; expected a subset of {','.join(ROW_ORDER)}")
  if args.tau_val:
    return write_tau_val(args, seeds)
  if args.traces:
    return write_traces(args, seeds, rows)
  # the DxMI rows' configs; the selected-τ rows need the finished grid (checked before anything is written)
  resolved = {name: resolve_row(name, args, seeds) for name in rows if name in DXMI_VARIANTS}
  from dxmi_jax.metrics import digits_classifier  # pylint: disable=import-outside-toplevel

  os.makedirs(args.workdir, exist_ok=True)
  rows_dir = os.path.join(args.workdir, "rows")
  os.makedirs(rows_dir, exist_ok=True)
  t_start = time.time()
  ddpm_dir, pretrain_seconds = pretrain(args.workdir)
  if args.train_only:
    # seed-major: every row's seed 0 first, then seed 1, ... (partial results cover every row)
    names = [r for r in rows if r in DXMI_VARIANTS]
    order = list(dict.fromkeys(seeds + [s for n in names for s in row_seeds.get(n, [])]))
    jobs, trained = [], set()
    for seed in order:
      for name in names:
        run = resolved[name][1]
        if seed in row_seeds.get(name, seeds) and (run, seed) not in trained:
          trained.add((run, seed))
          jobs.append((name, seed))
    bar = tqdm(jobs, desc="table_digits --train_only", unit="run", dynamic_ncols=True)
    for name, seed in bar:
      variant, run, _ = resolved[name]
      done_file = os.path.join(dxmi_run_dir(args.workdir, run, seed), "benchmark_train.json")
      start = _last_checkpoint(dxmi_run_dir(args.workdir, run, seed))
      if os.path.exists(done_file) and start >= _num_iters(variant, args):
        tqdm.write(f"{name} seed {seed}: already trained ({done_file})")
        continue
      bar.set_description_str(f"{name} seed {seed}: compiling, then training")
      cpu0 = time.process_time()
      run_dir, secs = dxmi_train(ddpm_dir, args.workdir, variant, run, seed, args.dxmi_iters)
      record = {
        "seconds": secs,  # this invocation's wall time (a resumed run: the part after resumed_from_step)
        "cpu_seconds": time.process_time() - cpu0,  # all threads of this process
        "resumed_from_step": max(start, 0),
        "machine": _machine(),
      }
      io.atomic_write_json(done_file, record)
      tqdm.write(f"{name} seed {seed}: trained in {secs:.0f} s ({record['cpu_seconds']:.0f} s CPU) ({run_dir})")
    return None
  os.makedirs(args.results, exist_ok=True)
  clf = digits_classifier.default_classifier()
  out_json = os.path.join(args.results, "table_digits.json")
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
  seeds_of = {}
  if args.merge and os.path.exists(out_json):  # keep the rows this invocation does not recompute
    with open(out_json) as f:
      old = json.load(f)
    old_workdir = next((t.split("=", 1)[1] for t in old.get("command", "").split() if t.startswith("--workdir=")), None)
    for k, v in old.get("rows", {}).items():
      if k in ROW_ORDER and k not in rows:
        v.setdefault("workdir", old_workdir)
        result["rows"][k] = v
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
      rec = None
      if os.path.exists(cache):
        with open(cache) as f:
          rec = json.load(f)
        if name in resolved and rec.get("run", resolved[name][1]) != resolved[name][1]:
          rec = None  # cached for another run folder (not expected: the selection is made once)
      if rec is None:
        t1 = time.time()
        rec, imgs = _seed_record(name, seed, args, ddpm_dir, clf, resolved.get(name))
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
    row["workdir"] = os.path.abspath(args.workdir)
    if name in DXMI_VARIANTS:
      row["summary_best"] = _summary([r["best"] for r in per_seed])
      row["tau"] = _tau(resolved[name][0], resolved[name][2])
      row["variant"], row["run"] = resolved[name][0], resolved[name][1]
    result["rows"][name] = row
  bar.close()
  if any(n in rows for n in (*TAU_ROWS_T4, "dxmi_t4_tau_selected", "dxmi_t10_tau_selected")):
    result["tau_study"] = tau_study(args.workdir, seeds, args)
    result["tau_comparison"] = tau_comparison(result["rows"])
    plot_tau(result["tau_study"], os.path.join(args.results, "digits_tau_val.png"))
    t10 = {n: resolved[n][1] for n in ("dxmi_t10_tau0", "dxmi_t10_tau_selected") if n in resolved}
    plot_tau_sigmas(
      tau_sigma_runs(args.workdir, result["tau_study"], seeds[0], t10),
      os.path.join(args.results, "digits_tau_sigmas.png"),
    )
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
