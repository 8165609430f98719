"""The digits benchmark's τ study: the selection rule, on synthetic records (no training, seconds)."""

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def td():
  spec = importlib.util.spec_from_file_location("table_digits", os.path.join(REPO, "benchmarks", "table_digits.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


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
