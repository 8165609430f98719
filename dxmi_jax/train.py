"""The loop: data -> train step -> log -> checkpoint -> evaluate; and the other modes.

``run(config, workdir, mode)`` with mode one of
  train     DxMI training; resumes from <workdir>/checkpoints if present
  pretrain  DDPM epsilon-prediction pretraining of the policy network (<workdir>/pretrain)
  sample    restore the latest checkpoint and write <workdir>/samples.npz
  eval      restore the latest checkpoint and write an evaluation record
Every check on user input runs before the workdir is touched.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import dxmi, experiment, parallel, sampling, writers

MODES = ("train", "pretrain", "sample", "eval")


class TrainingError(RuntimeError):
  pass


def run(config, workdir: str, mode: str = "train"):
  if mode not in MODES:
    raise experiment.ConfigError(f"--mode: expected one of {MODES}, got {mode!r}")
  if not workdir:
    raise experiment.ConfigError("--workdir: required")
  parallel.maybe_initialize_distributed()
  exp = experiment.build(config)  # validates before anything is written
  if mode in ("sample", "eval") and not ckpt_lib.has_checkpoint(workdir):
    raise experiment.ConfigError(f"--workdir: no checkpoint under {os.path.join(workdir, 'checkpoints')} "
                                 f"to {mode} from (train first)")
  workdir = os.path.abspath(workdir)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
  if mode == "train":
    return train_and_evaluate(exp, workdir)
  if mode == "pretrain":
    from dxmi_jax import pretrain  # pylint: disable=import-outside-toplevel
    return pretrain.pretrain(exp, workdir)
  if mode == "sample":
    return sample(exp, workdir)
  return evaluate_checkpoint(exp, workdir)


# ------------------------------------------------------------------------ state
def initial_state(exp, mesh):
  """A fresh state (with pretrained weights from config.init.*), replicated on the mesh."""
  from dxmi_jax import init as init_lib  # pylint: disable=import-outside-toplevel
  state = jax.jit(exp.init_state, out_shardings=parallel.replicated(mesh))(
      jax.random.PRNGKey(exp.config.training.seed))
  return init_lib.load_pretrained_into(exp, state)


def restore_or_init(exp, workdir, mesh, ckpt):
  abstract = exp.abstract_state()
  repl = parallel.replicated(mesh)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), abstract)
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(abstract)
    logging.info("resuming from step %d", int(meta["step"]))
    return state, int(meta["step"])
  return initial_state(exp, mesh), 0


def compile_train_step(exp, mesh):
  step = dxmi.make_train_step(exp.nets, exp.cfg, exp.data_shape, mesh=mesh)
  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=(0,))


# ------------------------------------------------------------------------- train
def train_and_evaluate(exp, workdir: str) -> Dict[str, float]:
  config = exp.config
  tc = config.training
  mesh = parallel.make_mesh()
  ckpt = ckpt_lib.Checkpointer(workdir, keep=tc.keep_checkpoints, best_metric=tc.best_metric,
                               async_save=tc.async_checkpoints)
  state, start = restore_or_init(exp, workdir, mesh, ckpt)
  writer = writers.MetricWriter(workdir)
  writer.truncate_after(start)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  train_step = compile_train_step(exp, mesh)
  t0 = time.time()
  progress = writers.Progress(tc.num_iters, start)
  check_every = max(1, min(tc.log_every, tc.max_consecutive_skips))
  last_metrics = {}
  step = start
  try:
    for step in range(start, tc.num_iters):
      batch = parallel.global_batch_from_local(exp.data.local_batch(step), mesh)
      state, metrics = train_step(state, batch)
      done = step + 1
      if done % check_every == 0 or done == tc.num_iters:
        _check_skips(state, tc.max_consecutive_skips, done)
      if done % tc.log_every == 0 or done == tc.num_iters or done == start + 1:
        flat = writers.flatten_metrics(parallel.to_host(metrics))
        flat.update(progress(done))
        writer.write(done, flat)
        writers.log_line(done, tc.num_iters, flat, ("ebm/d_loss", "ebm/v_loss", "sampler/sampler_loss"))
        last_metrics = flat
      eval_now = tc.eval_every and done % tc.eval_every == 0 and done != tc.num_iters
      eval_metrics = evaluate(exp, state, workdir, done, writer, final=False) if eval_now else {}
      if done % tc.checkpoint_every == 0 or eval_metrics:
        ckpt.save(done, state, metrics=eval_metrics, config_json=config.to_json_best_effort())
  finally:
    ckpt.wait()
  end = max(step + 1, start) if tc.num_iters > start else start
  final = evaluate(exp, state, workdir, end, writer, final=True)
  if ckpt.latest_step() != end:
    ckpt.save(end, state, metrics=final, config_json=config.to_json_best_effort(), force=True)
  ckpt.close()
  writer.close()
  if jax.process_index() == 0:
    _announce(workdir, final, time.time() - t0)
  return dict(last_metrics, **final)


def _check_skips(state, limit: int, step: int):
  run = int(jax.device_get(state.max_skip_run))
  if run >= limit:
    mask = int(jax.device_get(state.nonfinite_mask))
    names = [n for i, n in enumerate(dxmi.NONFINITE_QUANTITIES) if mask >> i & 1]
    raise TrainingError(
        f"stopping at step {step}: {run} consecutive iterations had non-finite values in "
        f"{', '.join(names) or 'a loss or gradient'} (config.training.max_consecutive_skips={limit}); "
        f"lower the learning rates or check the data")


def _announce(workdir, final, seconds):
  lines = [f"done in {seconds:.0f} s.",
           f"  metrics:     {os.path.join(workdir, 'metrics.jsonl')}",
           f"  tensorboard: {os.path.join(workdir, 'tensorboard')}",
           f"  checkpoints: {os.path.join(workdir, 'checkpoints')}"]
  for name in ("figure.png", "samples_grid.png"):
    if os.path.exists(os.path.join(workdir, name)):
      lines.append(f"  figure:      {os.path.join(workdir, name)}")
  if final:
    lines.append("  final: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()
                                        if isinstance(v, float)))
  print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------- evaluate
def evaluate(exp, state, workdir, step, writer, final: bool) -> Dict[str, float]:
  """Vector data: SW and AUC (+ figure); images: proxy FID when configured."""
  if exp.is_vector:
    from dxmi_jax import eval2d  # pylint: disable=import-outside-toplevel
    metrics = eval2d.evaluate_vector(exp, state, workdir if final else None)
  else:
    from dxmi_jax import image_experiment  # pylint: disable=import-outside-toplevel
    metrics = image_experiment.evaluate(exp, state, workdir, step, writer, final)
  if metrics:
    writer.write(step, metrics, kind="eval")
    logging.info("eval @%d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
  return metrics


def _restore_latest(exp, workdir):
  mesh = parallel.make_mesh()
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
  state, _ = restore_or_init(exp, workdir, mesh, ckpt)
  ckpt.close()
  return state, mesh


def evaluate_checkpoint(exp, workdir):
  state, _ = _restore_latest(exp, workdir)
  writer = writers.MetricWriter(workdir, tensorboard=False)
  step = int(jax.device_get(state.step))
  out = evaluate(exp, state, workdir, step, writer, final=True)
  writer.close()
  print(json.dumps({"step": step, **out}), flush=True)
  return out


# ------------------------------------------------------------------------ sample
def sample(exp, workdir):
  """Writes <workdir>/samples.npz from the latest checkpoint (arr_0; arr_1 labels if conditional)."""
  state, mesh = _restore_latest(exp, workdir)
  if not exp.is_vector:
    from dxmi_jax import image_experiment  # pylint: disable=import-outside-toplevel
    return image_experiment.sample(exp, state, workdir, mesh)
  sc = exp.config.sample
  gen = sampling.make_generator(exp.policy, exp.data_shape[1:], sc.batch_size, mesh)
  x = sampling.sample_many(gen, state.policy.params, sc.seed, sc.num, sc.batch_size)
  path = os.path.join(workdir, "samples.npz")
  if jax.process_index() == 0:
    _atomic_savez(path, arr_0=x.astype(np.float32))
    print(f"wrote {x.shape[0]} samples to {path}", flush=True)
  return path


def _atomic_savez(path, **arrays):
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
