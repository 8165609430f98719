"""The paper's CIFAR-10 table in miniature, on real data: DxMI on scikit-learn's digits (CPU).

Rows (the same pretrained DDPM network everywhere):
  DDPM T=1000      Ho et al. ancestral sampling over all 1000 steps (the "teacher" quality)
  VAR T=10 / T=4   the CIFAR VAR ancestral sampler with its schedule sigmas (DxMI's starting point)
  DDIM T=10 / T=4  deterministic DDIM on the same T-step schedule
  DxMI T=10 / T=4  the VAR sampler after DxMI fine-tuning (configs/digits.py, :t4)
  data             real train images (a random subset of the same size): the metric's floor

Metric: ``dxmi_jax.metrics.digits_classifier`` (Fréchet distance / precision / recall in a small
CNN's features against the 355-image test split, plus the predicted-class histogram).

"Seeds": one pretrained DDPM (training.seed of configs/digits.py).  Baselines: ``--seeds``
sampling seeds of that network.  DxMI: one fine-tuning run per seed (training.seed = seed:
value init, rollout noise, minibatch order and data order all change), each sampled once with
the same sampling seed as the baselines' matching seed.  The data row draws ``--num_samples``
train images per seed.  Mean and sample std (ddof=1) over seeds.

    python benchmarks/table_digits.py --workdir=workdir_digits
    (then results/table_digits.json, results/table_digits.md, results/digits_*.png)

Everything a step produces is cached in the workdir (pretrain/, dxmi_t*_s*/, rows/*.json), so an
interrupted run continues where it stopped; delete the workdir to start over.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dxmi_jax import io, modes  # noqa: E402

ROW_ORDER = ("ddpm1000", "var_t10", "ddim_t10", "dxmi_t10", "var_t4", "ddim_t4", "dxmi_t4", "data")
LABELS = {
  "ddpm1000": "DDPM (pretrained), T=1000",
  "var_t10": "VAR ancestral (pretrained), T=10",
  "ddim_t10": "DDIM (pretrained), T=10",
  "dxmi_t10": "**DxMI**, T=10",
  "var_t4": "VAR ancestral (pretrained), T=4",
  "ddim_t4": "DDIM (pretrained), T=4",
  "dxmi_t4": "**DxMI**, T=4",
  "data": "real train images (metric floor)",
}


def _args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=os.path.join(REPO, "workdir_digits"))
  p.add_argument("--results", default=os.path.join(REPO, "results"))
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (see the module docstring)")
  p.add_argument("--num_samples", type=int, default=500, help="samples per row and seed")
  p.add_argument(
    "--ddpm1000_seeds", type=int, default=-1, help="how many of --seeds the (slow) 1000-step row uses; -1: all"
  )
  p.add_argument("--dxmi_iters", type=int, default=-1, help="DxMI iterations; -1: the config's")
  p.add_argument("--rows", default=",".join(ROW_ORDER), help="subset of " + ",".join(ROW_ORDER))
  return p.parse_args(argv)


def _json_dump(path, obj):
  io.atomic_write_json(path, obj)


def _save_grid(path, images_uint8, scale=4):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from dxmi_jax import samples as samples_lib  # pylint: disable=import-outside-toplevel

  grid = samples_lib.make_grid(images_uint8[:64], nrow=8, padding=1)[..., 0]
  grid = np.kron(grid, np.ones((scale, scale), np.uint8))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(grid).save(path)


def _config(t4=False, **over):
  from configs import digits  # pylint: disable=import-outside-toplevel

  c = digits.get_config("t4" if t4 else "")
  for key, v in over.items():
    sec, name = key.split("__")
    c[sec][name] = v
  return c


def pretrain(workdir):
  """The one pretrained DDPM: (its folder, the seconds pretraining took)."""

  out = os.path.join(workdir, "ddpm")
  meta = os.path.join(out, "pretrain", "meta.json")
  if not os.path.exists(meta):
    modes.run(_config(), out, "pretrain")
  with open(meta) as f:
    m = json.load(f)
  return out, float(m.get("meta", m).get("seconds", float("nan")))


def _policy_params(config):
  """(experiment, policy params) with config.init.policy_checkpoint loaded."""
  from dxmi_jax import experiment, train  # pylint: disable=import-outside-toplevel

  exp = experiment.build(config)
  state = train.load_pretrained(exp)
  return exp, state.policy.params


def baseline_sampler(ddpm_dir, kind, T):
  """(policy, params) of the pretrained network under sampler ``kind`` with T steps."""
  from dxmi_jax.policies import build_policy  # pylint: disable=import-outside-toplevel

  c = _config(init__policy_checkpoint=ddpm_dir)
  exp, params = _policy_params(c)
  section = {"kind": kind, "num_steps": T}
  if kind in ("var", "ddim"):
    section["trainable_sigma"] = "fix_last" if kind == "var" else False
  policy = build_policy(section, exp.policy.net)
  return policy, {"net": params["net"], "log_sigma": np.asarray(policy.init_log_sigma())}


def dxmi_sampler(ddpm_dir, workdir, T, seed, iters):
  """Fine-tunes (or reuses) the DxMI run of (T, seed); returns (policy, params, seconds)."""

  run_dir = os.path.join(workdir, f"dxmi_t{T}_s{seed}")
  over = dict(init__policy_checkpoint=ddpm_dir, training__seed=seed)
  if iters > 0:
    over["training__num_iters"] = iters
  t0 = time.time()
  modes.run(_config(t4=T == 4, **over), run_dir, "train")
  seconds = time.time() - t0
  exp, params = _policy_params(_config(t4=T == 4, init__policy_checkpoint=run_dir))
  return exp.policy, params, seconds


def generate(policy, params, num, seed, batch=500):
  from dxmi_jax import sampling, samples as samples_lib  # pylint: disable=import-outside-toplevel

  bs = min(batch, num)
  gen = sampling.make_generator(policy, (8, 8, 1), bs)
  return samples_lib.to_uint8(sampling.sample_many(gen, params, seed, num, bs), "round")


def _summary(per_seed):
  out = {}
  for key in ("fd", "precision", "recall", "class_tv", "min_class_frac"):
    v = np.array([r[key] for r in per_seed], np.float64)
    out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
  out["class_hist_mean"] = [float(v) for v in np.mean([r["class_hist"] for r in per_seed], axis=0)]
  return out


def _fmt(s, key, digits=2):
  m = s[key]
  return f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}"


def markdown(result):
  lines = [
    "| sampler (same pretrained UNet) | NFE | digits FD ↓ | precision ↑ | recall ↑ | class TV ↓ | seeds |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  nfe = {
    "ddpm1000": 1000,
    "var_t10": 10,
    "ddim_t10": 10,
    "dxmi_t10": 10,
    "var_t4": 4,
    "ddim_t4": 4,
    "dxmi_t4": 4,
    "data": "–",
  }
  for name in ROW_ORDER:
    if name not in result["rows"]:
      continue
    s = result["rows"][name]["summary"]
    lines.append(
      f"| {LABELS[name]} | {nfe[name]} | {_fmt(s, 'fd')} | {_fmt(s, 'precision', 3)} | "
      f"{_fmt(s, 'recall', 3)} | {_fmt(s, 'class_tv', 3)} | {len(result['rows'][name]['per_seed'])} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None):
  args = _args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  from dxmi_jax.data import digits as digits_data  # pylint: disable=import-outside-toplevel
  from dxmi_jax.metrics import digits_classifier  # pylint: disable=import-outside-toplevel

  seeds = [int(s) for s in args.seeds.split(",")]
  rows = [r for r in args.rows.split(",") if r]
  bad = [r for r in rows if r not in ROW_ORDER]
  if bad:
    raise SystemExit(f"--rows: unknown {bad}; expected a subset of {ROW_ORDER}")
  os.makedirs(args.workdir, exist_ok=True)
  os.makedirs(args.results, exist_ok=True)
  rows_dir = os.path.join(args.workdir, "rows")
  os.makedirs(rows_dir, exist_ok=True)
  t_start = time.time()
  clf = digits_classifier.default_classifier()
  acc = clf.accuracy("test")
  ddpm_dir, pretrain_seconds = pretrain(args.workdir)
  result = {
    "command": "python benchmarks/table_digits.py " + " ".join(sys.argv[1:] if argv is None else argv),
    "machine": {
      "platform": platform.platform(),
      "processor": platform.processor(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
    },
    "classifier_test_accuracy": acc,
    "reference": "digits test split (355 images)",
    "num_samples": args.num_samples,
    "seeds": seeds,
    "pretrain_seconds": pretrain_seconds,
    "rows": {},
  }
  out_json = os.path.join(args.results, "table_digits.json")
  for name in [r for r in ROW_ORDER if r in rows]:
    cache = os.path.join(rows_dir, f"{name}.json")
    if os.path.exists(cache):
      with open(cache) as f:
        result["rows"][name] = json.load(f)
    else:
      t0 = time.time()
      per_seed, extra = [], {}
      use = seeds[: args.ddpm1000_seeds] if name == "ddpm1000" and args.ddpm1000_seeds > 0 else seeds
      for seed in use:
        if name == "data":
          imgs, _ = digits_data.digits_arrays("train")
          imgs = imgs[np.random.default_rng(seed).choice(len(imgs), args.num_samples, replace=False)]
        elif name.startswith("dxmi"):
          T = int(name.split("_t")[1])
          policy, params, secs = dxmi_sampler(ddpm_dir, args.workdir, T, seed, args.dxmi_iters)
          extra.setdefault("train_seconds", []).append(secs)
          extra.setdefault("sigma", []).append([float(v) for v in np.exp(np.asarray(params["log_sigma"]))])
          imgs = generate(policy, params, args.num_samples, 1000 + seed)
        else:
          kind, T = ("ddpm", 1000) if name == "ddpm1000" else (name.split("_t")[0], int(name.split("_t")[1]))
          policy, params = baseline_sampler(ddpm_dir, kind, T)
          imgs = generate(policy, params, args.num_samples, 1000 + seed)
        m = clf.evaluate(imgs)
        m["seed"] = seed
        per_seed.append(m)
        if seed == use[0]:
          _save_grid(os.path.join(args.results, f"digits_{name}.png"), imgs)
        print(
          f"{name} seed {seed}: fd={m['fd']:.3f} P={m['precision']:.3f} R={m['recall']:.3f} tv={m['class_tv']:.3f}",
          flush=True,
        )
      result["rows"][name] = {"per_seed": per_seed, "summary": _summary(per_seed), "seconds": time.time() - t0, **extra}
      _json_dump(cache, result["rows"][name])
    result["wall_seconds_this_invocation"] = time.time() - t_start
    _json_dump(out_json, result)
    with open(os.path.join(args.results, "table_digits.md"), "w") as f:
      f.write(markdown(result))
  print(markdown(result))
  return result


if __name__ == "__main__":
  main()
