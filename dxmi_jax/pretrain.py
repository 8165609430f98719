"""DDPM pretraining of the policy network (``--mode=pretrain``).

The usual epsilon-prediction loss on the 1000-step linear-beta schedule (Ho et al.):
k ~ U{0..999}, x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps, L = ||eps - eps_theta(x_k, k)||^2,
with the network's time input the integer k as a float, i.e. the same time axis as
the VAR sampler's continuous timesteps.  Adam with linear warm-up and an EMA of
the weights; the EMA weights are saved to ``<workdir>/pretrain`` and are what
``config.init.policy_checkpoint=<workdir>`` loads.

On SIGTERM (``preemption``) pretraining stops after the current iteration and saves
its whole state (weights, EMA, optimiser state, iteration) to
``<workdir>/pretrain_resume``; the next run continues from there bit for bit (the
batch and the key of iteration i are functions of i) and removes it when done.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from absl import logging

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import compiler, io, parallel, preemption, writers
from dxmi_jax.policies.schedules import ddpm_schedule


#: where a pretraining stopped by SIGTERM keeps its state (inside the workdir)
RESUME_DIR = "pretrain_resume"


def ddpm_loss(net, params, x0, key, y=None):
  """Mean squared epsilon error of a uniformly drawn diffusion step per sample."""
  sched = ddpm_schedule()
  k_t, k_e, k_d = jax.random.split(key, 3)
  b = x0.shape[0]
  k = jax.random.randint(k_t, (b,), 0, sched.alpha_bar.shape[0])
  abar = jnp.asarray(sched.alpha_bar)[k].reshape((b,) + (1,) * (x0.ndim - 1))
  eps = jax.random.normal(k_e, x0.shape, jnp.float32)
  xk = jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps
  kwargs = {} if y is None else {"y": y}
  pred = net.apply({"params": params}, xk, k.astype(jnp.float32), deterministic=False, rngs={"dropout": k_d}, **kwargs)
  return jnp.mean(jnp.square(pred.reshape(eps.shape) - eps))


def make_pretrain_step(net, tx, ema_decay):
  def step(params, ema, opt_state, batch, key):
    loss, grads = jax.value_and_grad(ddpm_loss, argnums=1)(net, params, batch["x"], key, batch.get("y"))
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    return params, ema, opt_state, loss

  return step


def pretrain(exp, workdir: str):
  cfg = exp.config
  pc = cfg.pretrain
  mesh = parallel.make_mesh()
  net = exp.policy.net
  key = jax.random.PRNGKey(cfg.training.seed)
  init_key, run_key = jax.random.split(jax.random.fold_in(key, 7))
  params = exp.init_state(init_key).policy.params["net"]
  sched = optax.linear_schedule(0.0, pc.lr, max(1, pc.warmup))
  tx = optax.adam(sched)
  opt_state = tx.init(params)
  ema = jax.tree.map(jnp.copy, params)
  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  step_fn = jax.jit(
    make_pretrain_step(net, tx, pc.ema),
    in_shardings=(repl, repl, repl, data, repl),
    out_shardings=(repl, repl, repl, repl),
    donate_argnums=(0, 1, 2),
    compiler_options=compiler.options(cfg.perf),
  )
  resume_dir = os.path.join(workdir, RESUME_DIR)
  start = 0
  if os.path.exists(os.path.join(resume_dir, "meta.json")):  # stopped by SIGTERM: continue where it stopped
    abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), {"params": params, "ema": ema, "opt": opt_state}
    )
    saved = ocp.StandardCheckpointer().restore(os.path.join(resume_dir, "state"), abstract)
    params, ema, opt_state = saved["params"], saved["ema"], saved["opt"]
    start = int(json.load(open(os.path.join(resume_dir, "meta.json")))["step"])
    logging.info("resuming pretraining from iteration %d (%s)", start, resume_dir)
  writer = writers.MetricWriter(os.path.join(workdir, "pretrain_logs"), tensorboard=False)
  writer.truncate_after(start)
  watcher = preemption.current()
  t0 = time.time()
  progress = writers.Progress(pc.num_iters, start)
  for i in range(start, pc.num_iters):
    local = exp.data.local_batch(i, pc.batch_size)
    batch = parallel.global_batch_from_local(local, mesh)
    params, ema, opt_state, loss = step_fn(params, ema, opt_state, batch, jax.random.fold_in(run_key, i))
    if (i + 1) % cfg.training.log_every == 0 or i + 1 in (1, pc.num_iters):  # 1: the compilation's time
      rec = {"pretrain/loss": float(loss), **progress(i + 1)}
      writer.write(i + 1, rec)
      writers.log_line(i + 1, pc.num_iters, rec, ("pretrain/loss",))
    if i + 1 < pc.num_iters and watcher.should_stop(i + 1):
      writer.close()
      _save_resume_point(resume_dir, i + 1, {"params": params, "ema": ema, "opt": opt_state})
      raise preemption.Preempted(
        f"preempted: saved pretraining iteration {i + 1} in {resume_dir}; run the same command to resume from it"
      )
  writer.close()
  out = os.path.join(workdir, "pretrain")
  if jax.process_index() == 0:
    ckpt_lib.save_params(
      out,
      {"net": jax.device_get(ema)},
      {"kind": "ddpm_pretrain", "num_iters": pc.num_iters, "arch": cfg.policy.net.arch, "seconds": time.time() - t0},
    )
    print(f"pretrained DDPM ({pc.num_iters} iterations, {time.time() - t0:.0f} s) saved to {out}", flush=True)
    shutil.rmtree(resume_dir, ignore_errors=True)  # (after the result is saved)
  return out


def _save_resume_point(resume_dir, step, tree):
  """The whole pretraining state, replacing an older resume point; meta.json (written last) names its iteration."""
  if jax.process_index() == 0 and os.path.exists(resume_dir):
    shutil.rmtree(resume_dir)
  ckptr = ocp.StandardCheckpointer()  # every process calls it (Orbax coordinates them)
  ckptr.save(os.path.join(resume_dir, "state"), tree)
  ckptr.wait_until_finished()
  if jax.process_index() == 0:
    io.atomic_write_json(os.path.join(resume_dir, "meta.json"), {"step": int(step)})
