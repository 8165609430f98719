"""The digits benchmark's τ study: the selection rule, on synthetic records (no training, seconds)."""

import json
import os

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def td():
  return load_benchmark("table_digits")


def test_select_tau_smallest_mean_ties_to_smaller(td):
  # seed by seed τ=3 has the single best run (9.0), but the smallest mean is τ=0.3's
  best_val = {0.0: [15.0, 14.0, 16.0], 0.3: [12.0, 13.0, 11.0], 1.0: [12.5, 12.5, 12.5], 3.0: [9.0, 20.0, 20.0]}
  sel, means = td.select_tau(best_val)
  assert sel == 0.3 and means[0.3] == 12.0 and means[3.0] == pytest.approx(49.0 / 3)
  # a tie on the mean goes to the smaller τ, in whatever order the scales come
  tie = {3.0: [10.0, 14.0], 1.0: [12.0, 12.0], 0.3: [11.0, 13.0], 0.0: [13.0, 13.0]}
  assert td.select_tau(tie)[0] == 0.3
  assert td.select_tau({1.0: [12.0, 12.0], 3.0: [10.0, 14.0]})[0] == 1.0
  assert td.select_tau({0.0: [5.0], 1.0: [5.0]})[0] == 0.0


def test_select_tau_refuses_unequal_or_missing_seeds(td):
  with pytest.raises(ValueError, match="same non-zero number of seeds"):
    td.select_tau({0.0: [1.0, 2.0, 3.0], 1.0: [1.0, 2.0]})
  with pytest.raises(ValueError, match="same non-zero number of seeds"):
    td.select_tau({0.0: [], 1.0: []})
  with pytest.raises(ValueError, match="non-finite"):
    td.select_tau({0.0: [1.0, float("nan")], 1.0: [2.0, 2.0]})


def _fake_run(workdir, run, seed, evals, finished):
  """A run folder as the trainer leaves it: metrics.jsonl with eval records (val FD), and a done marker."""
  d = os.path.join(workdir, f"{run}_s{seed}")
  os.makedirs(d)
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    for step, fd in evals:
      f.write(json.dumps({"step": step, "kind": "train", "sigma/sigma_0": 1.0}) + "\n")
      f.write(json.dumps({"step": step, "kind": "eval", "digits_fd": fd}) + "\n")
  if finished:
    with open(os.path.join(d, "benchmark_train.json"), "w") as f:
      json.dump({"seconds": 1.0}, f)


def test_tau_study_reads_run_folders_and_waits_for_the_grid(td, tmp_path, capsys):
  """The grid's best val FDs come from the runs' metrics.jsonl (the minimum over evaluations); the
  selection waits until every run finished; the selected rows refuse to run before that."""
  w = str(tmp_path)
  # per scale: (best val FD of seed 0, seed 1); τ=1 trains in the headline row's folders (same config)
  best = {0.0: (20.0, 18.0), 0.3: (15.0, 17.0), 1.0: (16.0, 16.0), 3.0: (25.0, 9.0)}
  for k, fds in best.items():
    row = f"dxmi_t4_tau{td._k(k)}"
    for seed, fd in enumerate(fds):
      _fake_run(w, td.RUN_ALIAS.get(row, row), seed, [(0, 50.0), (100, fd), (200, fd + 3.0)], k != 3.0 or seed == 0)
  args = td._args([f"--workdir={w}", "--seeds=0,1", "--dxmi_iters=200", f"--results={tmp_path / 'res'}"])
  study = td.tau_study(w, [0, 1], args)
  assert not study["complete"] and study["selected_scale"] is None
  g = {x["scale"]: x for x in study["grid"]}
  assert g[1.0]["runs"]["0"]["run"] == "dxmi_t4_s0"
  assert g[3.0]["runs"]["1"] == {
    "best_val_fd": 9.0,
    "best_step": 100,
    "last_step": 200,
    "finished": False,
    "run": "dxmi_t4_tau3_s1",
  }
  with pytest.raises(SystemExit) as e:
    td.main([f"--workdir={w}", "--seeds=0,1", "--dxmi_iters=200", "--train_only", "--rows=dxmi_t10_tau_selected"])
  assert e.value.code == 2
  assert "error: --rows: dxmi_t10_tau_selected needs the finished T=4 tau grid" in capsys.readouterr().err
  assert not os.path.exists(os.path.join(w, "ddpm"))  # refused before anything was written

  # the last run finishes: means 19, 16, 16, 17 -> a tie between 0.3 and 1 goes to 0.3
  with open(os.path.join(w, "dxmi_t4_tau3_s1", "benchmark_train.json"), "w") as f:
    json.dump({"seconds": 1.0}, f)
  study = td.tau_study(w, [0, 1], args)
  assert study["complete"] and study["selected_scale"] == 0.3
  # the same folders are not finished for a longer run (a marker left by a shorter one does not count)
  longer = td._args([f"--workdir={w}", "--seeds=0,1", "--dxmi_iters=300"])
  assert not td.tau_study(w, [0, 1], longer)["complete"]
  assert td.resolve_row("dxmi_t4_tau_selected", args, [0, 1]) == ("t4,tauscale=0.3", "dxmi_t4_tau0.3", 0.3)
  assert td.resolve_row("dxmi_t10_tau_selected", args, [0, 1]) == ("tauscale=0.3", "dxmi_t10_tau0.3", 0.3)


def test_rows_and_seeds_errors(td, capsys):
  for argv, msg in (
    (["--rows=dxmi_t4_tau7"], "error: --rows: unknown ['dxmi_t4_tau7']"),
    (["--seeds=0,x"], "error: --seeds: expected comma-separated integer seeds"),
  ):
    with pytest.raises(SystemExit) as e:
      td.main(argv + ["--train_only", "--workdir=/nonexistent/never"])
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_trace_summary_windows(td, tmp_path):
  """The overshoot analysis's numbers: val FD at start, 100, best and last; per window the mean energy
  gap (samples minus data), TD loss and policy gradient norm, and sigma_0 at the window's end."""
  d = tmp_path / "dxmi_t10_tau0_s0"
  d.mkdir()
  with open(d / "metrics.jsonl", "w") as f:
    for step in range(0, 1300, 10):
      gap = 0.1 if step < 1000 else 0.5
      rec = {"step": step, "kind": "train", "ebm/pos_e": -gap / 2, "ebm/neg_e": gap / 2, "ebm/v_loss": step / 1000.0}
      rec.update(
        {"sampler/grad_norm": 2.0, "ebm/grad_norm": 3.0, "sigma/sigma_0": 0.8 + step / 10000, "sigma/sigma_1": 0.1}
      )
      f.write(json.dumps(rec) + "\n")
      if step % 100 == 0:
        fd = {0: 21.0, 100: 40.0, 1000: 12.0}.get(step, 15.0 + (step > 1000))
        f.write(json.dumps({"step": step, "kind": "eval", "digits_fd": fd}) + "\n")
  s = td.trace_summary(str(d))
  assert (s["val_fd_start"], s["val_fd_100"], s["best_val_fd"], s["best_step"]) == (21.0, 40.0, 12.0, 1000)
  assert (s["last_step"], s["last_val_fd"]) == (1200, 16.0) and s["overshoot"] == pytest.approx(4.0)
  early, mid, late = s["windows"]
  assert early["energy_gap"] == pytest.approx(0.1) and late["energy_gap"] == pytest.approx(0.5)
  assert early["v_loss"] == pytest.approx(0.07)  # steps 0..140
  assert mid["sigma0_end"] == pytest.approx(0.899) and late["sigma0_end"] == pytest.approx(0.929)
  assert late["policy_grad_norm"] == 2.0 and s["sigma0_start"] == pytest.approx(0.8)
  assert "| x s0 | 21.0, 40.0, 12.0 (1000), 16.0 | 4.0 |" in td.traces_report({("x", 0): s})


def test_tau_sigma_runs_show_every_scale_and_distinct_t10_runs(td, tmp_path):
  study = {"selected_scale": 0.0}
  runs = td.tau_sigma_runs(
    str(tmp_path), study, 0, {"dxmi_t10_tau0": "dxmi_t10_tau0", "dxmi_t10_tau_selected": "dxmi_t10_tau0"}
  )
  names = [os.path.basename(p) for p in runs.values()]
  # τ = 0 selected: the grid still shows τ > 0 beside it, and the shared T=10 runs appear once
  assert names == ["dxmi_t4_tau0_s0", "dxmi_t4_tau0.3_s0", "dxmi_t4_s0", "dxmi_t4_tau3_s0", "dxmi_t10_tau0_s0"]
  assert list(runs)[0] == "T=4, k = 0 (selected), seed 0"
