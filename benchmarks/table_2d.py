"""The paper's 2D table: DDPM vs DxMI on 8 Gaussians, 5 seeds, SW and AUC (mean ± std).

    python benchmarks/table_2d.py [--seeds=5] [--out=results/table_2d]

Rows
  DDPM T=5, 10, 100   the pretrained epsilon-MLP sampled with the T-step VAR schedule
                      (quadratic eta by the official bisection, continuous Stirling times;
                      dxmi_jax.policies.schedules.var_schedule)
  DDPM T=1000         the same network with Ho et al.'s 1000-step ancestral sampler
  DxMI T=5, T=10      DxMI fine-tuned from the DDPM of the same T (config.init.policy_checkpoint)
  DxMI T=5, tau=0     tau1 = tau2 = 0 ablation, fine-tuned like DxMI T=5
  DxMI T=5, scratch   DxMI from a randomly initialised policy
Each seed pretrains its own DDPM (configs/gaussians2d.py, --mode=pretrain semantics) and
uses it for every row of that seed.  Metrics are those of dxmi_jax.evaluators.vector
(SW: p=2, 1,000 projections, 10,000 samples, mean over independent data draws; AUC of -E against uniform noise on
[-4, 4]^2).  DDPM rows have no energy, so no AUC.  Writes <out>.json and <out>.md.
"""

import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from tqdm import tqdm  # noqa: E402

from configs import gaussians2d  # noqa: E402
from dxmi_jax import experiment, init, io, modes, pretrain  # noqa: E402
from dxmi_jax.evaluators.vector import VectorEvaluator  # noqa: E402

_KEYS = ("sw", "sw_std", "sw_floor", "sw_floor_std", "auc", "auc_ideal")

flags.DEFINE_integer("seeds", 5, "Number of seeds (0..n-1).")
flags.DEFINE_integer("num_iters", -1, "DxMI iterations per run (-1: the config's).")
flags.DEFINE_integer("pretrain_iters", -1, "DDPM pretraining iterations (-1: the config's).")
flags.DEFINE_list("rows", [], "Subset of row names to run (default: all).")
flags.DEFINE_string("out", "results/table_2d", "Output prefix (.json and .md are written).")
flags.DEFINE_string("workdir", "", "Scratch folder; rows cached there are reused (default: a temporary one).")
FLAGS = flags.FLAGS

DDPM_ROWS = [("DDPM T=5", 5), ("DDPM T=10", 10), ("DDPM T=100", 100), ("DDPM T=1000", 1000)]
DXMI_ROWS = [
  ("DxMI T=5", 5, "", True),
  ("DxMI T=10", 10, "", True),
  ("DxMI T=5, tau=0", 5, "tau0", True),
  ("DxMI T=5, from scratch", 5, "", False),
]


def base_config(seed, T=5, variant=""):
  # "scratch": this script pretrains and points each row at the DDPM itself
  c = gaussians2d.get_config(",".join(filter(None, ("scratch", variant))))
  c.training.seed = seed
  c.policy.num_steps = T
  if FLAGS.num_iters >= 0:
    c.training.num_iters = FLAGS.num_iters
  if FLAGS.pretrain_iters >= 0:
    c.pretrain.num_iters = FLAGS.pretrain_iters
  c.training.checkpoint_every = max(1, c.training.num_iters)
  return c


def ddpm_row(seed, T, ddpm_dir):
  c = base_config(seed, min(T, 999))
  if T == 1000:
    c.policy.kind = "ddpm"
    c.policy.num_steps = 1000
  c.init.policy_checkpoint = ddpm_dir
  exp = experiment.build(c)
  state = init.load_pretrained_into(exp, exp.init_state(jax.random.PRNGKey(seed)))
  out = VectorEvaluator(exp)(state, 0)
  return {**{k: out[k] for k in _KEYS if k in out}, "auc": None}


def _cached(root, seed, name, fn):
  """A row's result, computed once: cached as JSON in the workdir, so the script resumes."""
  path = os.path.join(root, f"seed{seed}", name.replace(" ", "_").replace(",", "").replace("=", "") + ".json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  out = fn()
  io.atomic_write_json(path, out)
  logging.info("seed %d %s: %s", seed, name, out)
  return out


def run_table(root):
  rows = {name: [] for name, *_ in DDPM_ROWS + DXMI_ROWS}
  selected = set(FLAGS.rows) or set(rows)
  # one tick per DDPM pretraining and per row; the description says what runs (and compiles) now
  bar = tqdm(total=FLAGS.seeds * (1 + len(selected & set(rows))), desc="table_2d", unit="run", dynamic_ncols=True)

  def doing(seed, what):
    bar.set_description_str(f"seed {seed}: {what}")
    bar.refresh()

  for seed in range(FLAGS.seeds):
    t_seed = time.time()
    ddpm_dir = os.path.join(root, f"seed{seed}", "ddpm")
    if not os.path.exists(os.path.join(ddpm_dir, "pretrain", "meta.json")):
      c = base_config(seed)
      doing(seed, f"DDPM pretraining (compiling, then {c.pretrain.num_iters} iterations)")
      pretrain.pretrain(experiment.build(c), ddpm_dir)
    bar.update()
    for name, T in DDPM_ROWS:
      if name in selected:
        doing(seed, f"{name}: compiling the sampler, sampling and scoring")
        rows[name].append(_cached(root, seed, name, lambda T=T: ddpm_row(seed, T, ddpm_dir)))
        bar.update()
    for name, T, variant, finetune in DXMI_ROWS:
      if name not in selected:
        continue
      c = base_config(seed, T, variant)
      if finetune:
        c.init.policy_checkpoint = ddpm_dir
      wd = os.path.join(root, f"seed{seed}", name.replace(" ", "_").replace(",", "").replace("=", ""))
      doing(seed, f"{name}: compiling, then {c.training.num_iters} iterations and the evaluation")
      rows[name].append(
        _cached(root, seed, name, lambda c=c, wd=wd: {k: modes.run(c, wd, "train").get(k) for k in _KEYS})
      )
      bar.update()
    logging.info("seed %d done in %.0f s", seed, time.time() - t_seed)
  bar.close()
  return {k: v for k, v in rows.items() if v}


def summarise(runs):
  out = {}
  for name, recs in runs.items():
    entry = {"n": len(recs)}
    for key in _KEYS:
      vals = [r[key] for r in recs if r.get(key) is not None]
      if vals:
        entry[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": vals}
    out[name] = entry
  return out


def markdown(summary, meta):
  def fmt(e, k, nd):
    return f"{e[k]['mean']:.{nd}f} ± {e[k]['std']:.{nd}f}" if k in e else "—"

  lines = ["| method | SW (↓) | AUC (↑) |", "|---|---|---|"]
  for name, e in summary.items():
    lines.append(f"| {name} | {fmt(e, 'sw', 4)} | {fmt(e, 'auc', 4)} |")
  any_e = next(iter(summary.values()))
  floors = [v for e in summary.values() if "sw_floor" in e for v in e["sw_floor"]["values"]]
  spread = [v for e in summary.values() if "sw_floor_std" in e for v in e["sw_floor_std"]["values"]]
  ideal = next((e["auc_ideal"]["mean"] for e in summary.values() if "auc_ideal" in e), float("nan"))
  lines += [
    "",
    f"Each SW is the mean over {meta['sw_draws']} independent data draws of 10,000 points; the table "
    f"gives mean ± std over seeds.  Data-vs-data SW floor (mean over {meta['sw_draws']} pairs of "
    f"draws): {np.mean(floors):.4f}, std over draws {np.mean(spread):.4f}.  "
    f"Ideal AUC (true density): {ideal:.4f}.",
    f"{any_e['n']} seeds; {meta['machine']}; wall time {meta['wall_s'] / 60:.1f} min; `{meta['command']}`.",
  ]
  return "\n".join(lines) + "\n"


def main(_):
  logging.set_verbosity(logging.INFO)
  t0 = time.time()
  root = FLAGS.workdir or tempfile.mkdtemp(prefix="table2d_")
  runs = run_table(root)
  summary = summarise(runs)
  meta = {
    "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
    f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    "jax": jax.__version__,
    "wall_s": time.time() - t0,
    "command": "python " + " ".join(sys.argv),
    "sw_draws": base_config(0).eval.sw_draws,
    "protocol": "SW p=2, 1000 projections, 10000 samples, mean over independent data draws; "
    "AUC of -E vs uniform noise on [-4,4]^2",
  }
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  io.atomic_write_json(FLAGS.out + ".json", {"meta": meta, "summary": summary})
  io.atomic_write_text(FLAGS.out + ".md", markdown(summary, meta))
  print(markdown(summary, meta))


if __name__ == "__main__":
  app.run(main)
