"""Reconstruction pretraining of the autoencoder energy (``ae_energy``) on the training normals.

The authors start the EBM from an autoencoder pretrained on the normal data.  Here that is a
stage of ``--mode=train`` (``stage``, registered by the project): when the config's energy is
an ``ae_energy`` and ``config.init.pretrain_energy`` is set, a fresh run first trains the
autoencoder into ``<workdir>/pretrain_energy`` by Adam on the mean squared reconstruction error
(``AEEnergy.recon_error``), or reuses it when its ``meta.json`` is there, and DxMI then starts
from those weights (the learnt scale s starts at 1).  ``pretrain_params`` is the same training
for in-process use, optionally vmapped over seeds (the benchmark's runs).

Settings: ``config.pretrain_energy.{num_iters, batch_size, lr}``.
"""

from __future__ import annotations

import os
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dxmi_jax import io
from dxmi_jax.proj.anomaly.networks import AEEnergy

DIRNAME = "pretrain_energy"


def make_step(module: AEEnergy, lr: float):
  """``step((params, opt_state), x) -> ((params, opt_state), loss)``: one Adam step on the
  mean reconstruction error of the batch x."""
  tx = optax.adam(lr)

  def loss_fn(params, x):
    return jnp.mean(module.apply({"params": params}, x, method=AEEnergy.recon_error))

  def step(carry, x):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  return tx, step, loss_fn


def pretrain_params(module: AEEnergy, params, next_batch, num_iters: int, lr: float, vmapped: bool = False):
  """(params after ``num_iters`` Adam steps on ``next_batch(i)``, the (num_iters,) losses).

  ``vmapped``: params and batches carry a leading axis of independent runs (seeds).
  """
  tx, step, _ = make_step(module, lr)
  step = jax.jit(jax.vmap(step) if vmapped else step, donate_argnums=(0,))
  params = jax.tree.map(jnp.copy, params)  # the steps donate their inputs; the caller's stay valid
  carry = (params, (jax.vmap(tx.init) if vmapped else tx.init)(params))
  losses = []
  for i in range(num_iters):
    carry, loss = step(carry, jnp.asarray(next_batch(i)))
    losses.append(loss)
  return carry[0], np.asarray(jnp.stack(losses)) if losses else np.zeros((0,), np.float32)


def _load(path, template):
  with open(os.path.join(path, "params.msgpack"), "rb") as f:
    return flax.serialization.from_bytes(template, f.read())


def stage(exp, workdir: str, pretrained):
  """The training stage (dxmi_jax.projects): pretrain or reuse, then start the energy from it."""
  cfg = exp.config
  if cfg.energy.arch != "ae_energy" or not cfg.init.pretrain_energy or not cfg.dxmi.separate_energy:
    return pretrained
  path = os.path.join(workdir, DIRNAME)
  template = jax.tree.map(np.asarray, exp.abstract_state().energy.params)
  template = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), template)
  if os.path.exists(os.path.join(path, "meta.json")):
    print(f"reusing the pretrained autoencoder energy in {path}", flush=True)
    params = _load(path, template)
  else:
    params = pretrain(exp, path)
  base = exp.abstract_state() if pretrained is None else pretrained
  return base.replace(energy=base.energy.replace(params=jax.tree.map(jnp.asarray, params)))


def pretrain(exp, path: str):
  """Trains the autoencoder of ``exp`` from its initial weights into ``path``; returns params."""
  cfg = exp.config
  pc = cfg.pretrain_energy
  print(
    f"pretraining the autoencoder energy ({pc.num_iters} iterations, batch {pc.batch_size}) into {path}; "
    f"DxMI then trains it as an EBM",
    flush=True,
  )
  params = exp.init_state(jax.random.PRNGKey(cfg.training.seed)).energy.params
  t0 = time.time()
  params, losses = pretrain_params(
    exp.energy_module, params, lambda i: exp.data.data.batch(i, pc.batch_size), pc.num_iters, pc.lr
  )
  os.makedirs(path, exist_ok=True)
  io.atomic_write(os.path.join(path, "params.msgpack"), lambda f: f.write(flax.serialization.to_bytes(params)))
  meta = {
    "num_iters": int(pc.num_iters),
    "batch_size": int(pc.batch_size),
    "lr": float(pc.lr),
    "recon_error_first": float(losses[0]),
    "recon_error_last": float(losses[-1]),
    "seconds": round(time.time() - t0, 2),
  }
  io.atomic_write_json(os.path.join(path, "meta.json"), meta)  # last: marks the stage done
  print(f"autoencoder reconstruction error {meta['recon_error_first']:.4g} -> {meta['recon_error_last']:.4g}")
  return jax.tree.map(np.asarray, params)
