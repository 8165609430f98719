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
uses it for every row of that seed.  Metrics are those of dxmi_jax.eval2d
(SW: p=2, 1,000 projections, 10,000 samples; AUC of -E against uniform noise on
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

from configs import gaussians2d  # noqa: E402
from dxmi_jax import eval2d, experiment, init, pretrain, train  # noqa: E402

flags.DEFINE_integer("seeds", 5, "Number of seeds (0..n-1).")
flags.DEFINE_integer("num_iters", -1, "DxMI iterations per run (-1: the config's).")
flags.DEFINE_integer("pretrain_iters", -1, "DDPM pretraining iterations (-1: the config's).")
flags.DEFINE_list("rows", [], "Subset of row names to run (default: all).")
flags.DEFINE_string("out", "results/table_2d", "Output prefix (.json and .md are written).")
flags.DEFINE_string("workdir", "", "Scratch folder (default: a temporary one).")
FLAGS = flags.FLAGS

DDPM_ROWS = [("DDPM T=5", 5), ("DDPM T=10", 10), ("DDPM T=100", 100), ("DDPM T=1000", 1000)]
DXMI_ROWS = [("DxMI T=5", 5, "", True), ("DxMI T=10", 10, "", True),
             ("DxMI T=5, tau=0", 5, "tau0", True), ("DxMI T=5, from scratch", 5, "", False)]


def base_config(seed, T=5, variant=""):
  c = gaussians2d.get_config(variant)
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
  out = eval2d.evaluate_vector(exp, state)
  return {"sw": out["sw"], "sw_floor": out["sw_floor"], "auc": None, "auc_ideal": out.get("auc_ideal")}


def run_table(root):
  rows = {name: [] for name, *_ in DDPM_ROWS + DXMI_ROWS}
  selected = set(FLAGS.rows) or set(rows)
  for seed in range(FLAGS.seeds):
    t_seed = time.time()
    ddpm_dir = os.path.join(root, f"seed{seed}", "ddpm")
    pretrain.pretrain(experiment.build(base_config(seed)), ddpm_dir)
    for name, T in DDPM_ROWS:
      if name in selected:
        rows[name].append(ddpm_row(seed, T, ddpm_dir))
        logging.info("seed %d %s: %s", seed, name, rows[name][-1])
    for name, T, variant, finetune in DXMI_ROWS:
      if name not in selected:
        continue
      c = base_config(seed, T, variant)
      if finetune:
        c.init.policy_checkpoint = ddpm_dir
      wd = os.path.join(root, f"seed{seed}", name.replace(" ", "_").replace(",", "").replace("=", ""))
      res = train.run(c, wd, "train")
      rows[name].append({k: res.get(k) for k in ("sw", "sw_floor", "auc", "auc_ideal")})
      logging.info("seed %d %s: %s", seed, name, rows[name][-1])
    logging.info("seed %d done in %.0f s", seed, time.time() - t_seed)
  return {k: v for k, v in rows.items() if v}


def summarise(runs):
  out = {}
  for name, recs in runs.items():
    entry = {"n": len(recs)}
    for key in ("sw", "auc", "sw_floor", "auc_ideal"):
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
  floor = next((e["sw_floor"]["mean"] for e in summary.values() if "sw_floor" in e), float("nan"))
  ideal = next((e["auc_ideal"]["mean"] for e in summary.values() if "auc_ideal" in e), float("nan"))
  lines += ["", f"Data-vs-data SW floor (10,000 vs 10,000): {floor:.4f}.  Ideal AUC (true density): {ideal:.4f}.",
            f"{any_e['n']} seeds; {meta['machine']}; wall time {meta['wall_s'] / 60:.1f} min; "
            f"`{meta['command']}`."]
  return "\n".join(lines) + "\n"


def main(_):
  logging.set_verbosity(logging.INFO)
  t0 = time.time()
  root = FLAGS.workdir or tempfile.mkdtemp(prefix="table2d_")
  runs = run_table(root)
  summary = summarise(runs)
  meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                     f"{jax.device_count()} x {jax.devices()[0].device_kind}",
          "jax": jax.__version__, "wall_s": time.time() - t0, "command": "python " + " ".join(sys.argv),
          "protocol": "SW p=2, 1000 projections, 10000 samples; AUC of -E vs uniform noise on [-4,4]^2"}
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
  with open(FLAGS.out + ".json", "w") as f:
    json.dump({"meta": meta, "summary": summary}, f, indent=1)
  with open(FLAGS.out + ".md", "w") as f:
    f.write(markdown(summary, meta))
  print(markdown(summary, meta))


if __name__ == "__main__":
  app.run(main)
