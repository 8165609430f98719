"""Two processes with jax.distributed (one CPU device each) train like one process with two devices.

The reference is one process with two CPU devices (same global batch, same data
mesh), run through main.py to N iterations with a checkpoint half way.  The two
processes then resume from that half-way checkpoint: both restore it, train the
second half with cross-process all-reduces (gloo), save collectively and evaluate.
Their metrics.jsonl (written by process 0 only) and final state must match the
reference to 1e-5.

A second test sends SIGTERM to one of two processes (JAX's preemption service runs on
CPU too): both stop at the same step, save it, and resume from it.

Process 1 of a multi-process CPU job cannot use the persistent compilation cache
(jax keys it by process), so each two-process run pays one full compile.
"""

import os
import shutil
import signal
import socket
import subprocess

import jax
import numpy as np
import pytest

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import writers
from conftest import REPO, cli_flags, main_cmd, records, subprocess_env

N = 20
RUN = dict(training__num_iters=N, training__log_every=5, training__checkpoint_every=N // 2, training__eval_every=0)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(tmp_path):
  flags = cli_flags(**RUN)
  ref = tmp_path / "ref"
  res = subprocess.run(
    main_cmd(ref, *flags),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert ckpt_lib.committed_steps(str(ref)) == [N // 2, N]
  assert ckpt_lib.read_meta(str(ref))["device_count"] == 2

  # the two-process job starts from the reference's half-way checkpoint
  wd = tmp_path / "two"
  shutil.copytree(ref, wd)
  shutil.rmtree(wd / "checkpoints" / str(N))
  for name in ("tensorboard", "figure.png"):
    shutil.rmtree(wd / name) if (wd / name).is_dir() else os.remove(wd / name)
  port = _free_port()
  procs = [
    subprocess.Popen(
      main_cmd(wd, *flags),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=subprocess_env(DXMI_COORDINATOR=f"localhost:{port}", DXMI_NUM_PROCESSES="2", DXMI_PROCESS_ID=str(i)),
    )
    for i in range(2)
  ]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=420))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for i, (p, (_out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i}:\n{err[-3000:]}"
  assert "process 0 of 2, 1 local / 2 global devices" in outs[0][1]
  assert f"resuming from step {N // 2}" in outs[0][1]
  # process 0 alone reports and writes
  assert "done in" in outs[0][0] and "done in" not in outs[1][0]
  assert f"step {N}/{N}" in outs[0][1] and f"step {N}/{N}" not in outs[1][1]
  meta = ckpt_lib.read_meta(str(wd))
  assert meta["step"] == N and meta["process_count"] == 2 and meta["device_count"] == 2

  ra, rb = records(ref), records(wd)
  assert [(r["step"], r["kind"]) for r in ra] == [(r["step"], r["kind"]) for r in rb]
  for x, y in zip(ra, rb):
    x, y = writers.comparable(x), writers.comparable(y)
    assert x.keys() == y.keys()
    for k in x:
      if isinstance(x[k], float):
        np.testing.assert_allclose(y[k], x[k], rtol=1e-5, atol=1e-5, err_msg=f"step {x['step']}: {k}")
  sa, _ = ckpt_lib.load_raw(str(ref))
  sb, _ = ckpt_lib.load_raw(str(wd))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), sa, sb)
  exact = all(jax.tree.leaves(jax.tree.map(np.array_equal, sa, sb)))
  print(f"two processes vs one: final state bitwise equal: {exact}")


def _start_two(wd, flags, port):
  return [
    subprocess.Popen(
      main_cmd(wd, *flags),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=subprocess_env(DXMI_COORDINATOR=f"localhost:{port}", DXMI_NUM_PROCESSES="2", DXMI_PROCESS_ID=str(i)),
    )
    for i in range(2)
  ]


def _finish(procs, head=("", "")):
  outs = []
  try:
    for p, h in zip(procs, head):
      out, err = p.communicate(timeout=420)
      outs.append((out, h + err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


@pytest.mark.slow
def test_sigterm_on_one_process_stops_both_at_the_same_step_and_the_restart_resumes(tmp_path):
  """JAX's preemption service (it owns SIGTERM after jax.distributed.initialize) tells both processes;
  reached_preemption_sync_point agrees on the step; both save it, exit 143, and resume from it."""
  n = 400
  flags = cli_flags(
    training__num_iters=n, training__log_every=10, training__checkpoint_every=n // 2, training__eval_every=0
  )
  ref = tmp_path / "ref"
  res = subprocess.run(
    main_cmd(ref, *flags),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
  )
  assert res.returncode == 0, res.stderr[-3000:]

  wd = tmp_path / "two"
  procs = _start_two(wd, flags, _free_port())
  head = []
  for line in procs[0].stderr:  # process 0 logs the steps; process 1 is the one preempted
    head.append(line)
    if f"step 20/{n}" in line:
      procs[1].send_signal(signal.SIGTERM)
      break
  outs = _finish(procs, ("".join(head), ""))
  for i, (p, (_out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 143, f"process {i} (rc {p.returncode}):\n{err[-3000:]}"
  stopped = ckpt_lib.latest_step(str(wd))
  assert 20 <= stopped < n, stopped
  for _out, err in outs:
    assert f"preempted: saved checkpoint {stopped} in {wd / 'checkpoints'}" in err
  assert ckpt_lib.read_meta(str(wd))["process_count"] == 2

  procs = _start_two(wd, flags, _free_port())
  outs = _finish(procs)
  for i, (p, (_out, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i}:\n{err[-3000:]}"
  assert f"resuming from step {stopped}" in outs[0][1]
  ra, rb = records(ref), records(wd)
  assert [(r["step"], r["kind"]) for r in ra] == [(r["step"], r["kind"]) for r in rb]
  sa, _ = ckpt_lib.load_raw(str(ref))
  sb, _ = ckpt_lib.load_raw(str(wd))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), sa, sb)
  exact = all(jax.tree.leaves(jax.tree.map(np.array_equal, sa, sb)))
  print(f"preempted at step {stopped}; resumed two processes vs one: final state bitwise equal: {exact}")
