"""The training loop, top to bottom: restore or initialise, compile, loop, log, evaluate, checkpoint.

``train_and_evaluate(exp, workdir, pretrained)``; the modes (and their checks of user
input) are in ``dxmi_jax.modes``, which main.py calls.

Every check on user input (config, pretrained weights, a resumed checkpoint's
architecture) runs before the workdir is touched: bad input raises
``errors.ConfigError`` and leaves nothing on disk.

Exact resume.  The checkpoint holds the whole state (parameters, optimiser
states, AVR scales, the PRNG key, the step); iteration i draws its randomness
from fold_in(key, i) and its batch from (seed, i); so a run killed at any point
and restarted continues bit for bit.  metrics.jsonl is cut back to the restored
step (records past it came from the lost stretch and are written again), and
records are written at fixed steps (1, every log_every, the last) so a resumed
run's file equals an uninterrupted one's, ``perf/`` fields aside.

Checkpoints: every ``checkpoint_every`` steps (and with every intermediate
evaluation) and once at the end, after the final evaluation, with its metrics;
the last ``keep_checkpoints`` are kept, and with ``best_metric`` the best one by
that evaluation metric also under checkpoints_best/ (direction: ``min:NAME`` /
``max:NAME``, or by name, see ``checkpoint.HIGHER_IS_BETTER``).  A finished run
started again does nothing (use --mode=eval to re-evaluate).

Faults (docs/faults.md): the resume point is the newest checkpoint that restores
(``checkpoint.select``, chosen by ``modes.run``); a failed save or a refused write
stops the run with a TrainingError naming the workdir, its free space and the last
complete checkpoint; SIGTERM (``preemption``) saves the step reached and raises
``preemption.Preempted``, dropping an evaluation in flight, which the restart runs.

Multi-host: every process runs this same loop on its slice of each global batch
(``parallel``); all of them save and restore (Orbax coordinates them); only
process 0 writes metrics, TensorBoard, figures and logs at INFO.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Dict

import jax
import numpy as np
from absl import logging

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import compiler, dxmi, evaluators, io, parallel, preemption, projects, writers
from dxmi_jax.data.loader import prefetch_to_device
from dxmi_jax.errors import TrainingError

_LOG_KEYS = ("ebm/d_loss", "ebm/v_loss", "sampler/sampler_loss")
#: OS errors of a write that storage refused (full, over quota, read-only, failing): one error line
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)


# ------------------------------------------------------------------------ state
def load_pretrained(exp, policy_path=None):
  """config.init.* weights placed into an abstract state (None if not configured).

  ``policy_path`` replaces config.init.policy_checkpoint (config.init.pretrain_first).
  Runs before anything is written: a missing or mis-shaped checkpoint raises ConfigError.
  """
  if not (policy_path or exp.config.init.policy_checkpoint or exp.config.init.value_checkpoint):
    return None
  from dxmi_jax import init as init_lib  # pylint: disable=import-outside-toplevel

  return init_lib.load_pretrained_into(exp, exp.abstract_state(), policy_path)


def initial_state(exp, mesh, pretrained=None):
  """A fresh state (with pretrained weights from config.init.*), on the mesh (``state_shardings``).

  ``pretrained``: what ``load_pretrained`` returned (None: no pretrained weights).  This is
  the one place where they enter the state: their loaded leaves replace the fresh ones.
  """
  abstract = exp.abstract_state()
  leaf_shardings = jax.tree.leaves(state_shardings(exp, mesh, abstract))
  # flattened: every exp.init_state call builds new optimiser objects (pytree metadata)
  leaves = jax.jit(lambda k: jax.tree.leaves(exp.init_state(k)), out_shardings=leaf_shardings)(
    jax.random.PRNGKey(exp.config.training.seed)
  )
  state = jax.tree.unflatten(jax.tree.structure(abstract), leaves)
  if pretrained is not None:  # loaded leaves replace the fresh ones; the rest stays as initialised
    leaves, treedef = jax.tree_util.tree_flatten(state)
    loaded = jax.tree_util.tree_leaves(pretrained)
    assert len(loaded) == len(leaves)
    leaves = [
      fresh if isinstance(pre, jax.ShapeDtypeStruct) else parallel.replicate(pre, mesh)
      for fresh, pre in zip(leaves, loaded)
    ]
    state = jax.tree_util.tree_unflatten(treedef, leaves)
  # committed to the mesh: an uncommitted state would make the train step trace twice
  return jax.device_put(state, jax.tree.unflatten(jax.tree.structure(state), leaf_shardings))


def abstract_on(exp, mesh):
  """exp.abstract_state() with each leaf's sharding on ``mesh`` (``state_shardings``)."""
  abstract = exp.abstract_state()
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shardings(exp, mesh, abstract)
  )


def restore_or_init(exp, workdir, mesh, ckpt, pretrained=None, step=None):
  """(state, step, meta) from checkpoint ``step`` (default: the latest), or a fresh state at step 0
  (meta None) when there is none.  ``modes.run`` has chosen ``step`` by ``checkpoint.select``
  (the newest that restores) and moved damaged newer ones aside."""
  step = ckpt.latest_step() if step is None else step
  if step is not None:
    state, meta = ckpt.restore(abstract_on(exp, mesh), step=step)
    return state, int(meta["step"]), meta
  return initial_state(exp, mesh, pretrained), 0, None


def state_shardings(exp, mesh, abstract=None):
  """The sharding of every state leaf (a tree like ``abstract``, default exp.abstract_state()):
  replicated, or FSDP rules with config.training.fsdp."""
  abstract = exp.abstract_state() if abstract is None else abstract
  return parallel.state_shardings(
    abstract, mesh, fsdp=exp.config.training.fsdp, min_size=exp.config.training.fsdp_min_size
  )


def compile_train_step(exp, mesh):
  """The jitted train step.  The state keeps the shardings it comes with (``state_shardings``,
  as placed by ``initial_state`` / restored); the step returns it in the same layout."""
  rules = parallel.ShardingRules(mesh, param_shardings=state_shardings(exp, mesh))
  step = projects.make_train_step(exp, rules)  # config.trainer (default dxmi)
  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return jax.jit(
    step,
    in_shardings=(None, data),
    out_shardings=(None, repl),
    donate_argnums=(0,),
    compiler_options=compiler.options(exp.config.perf),
  )


def lower_train_step(exp, mesh):
  """The train step lowered on abstract inputs of the real shapes (compile-only analysis)."""
  abstract = exp.abstract_state()
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shardings(exp, mesh, abstract)
  )
  data = parallel.batch_sharding(mesh)
  batch = {"x": jax.ShapeDtypeStruct(exp.data_shape, np.float32, sharding=data)}
  if exp.class_cond:
    batch["y"] = jax.ShapeDtypeStruct(exp.data_shape[:1], np.int32, sharding=data)
  return compile_train_step(exp, mesh).lower(state, batch)


def data_position(config, step: int) -> Dict:
  """What a checkpoint records about the data stream: batch i is a pure function of
  (data, seed, global batch size, i), so the position is the step."""
  return {
    "step": int(step),
    "seed": int(config.training.seed),
    "batch_size": int(config.training.batch_size),
    "data": config.data.name,
    "path": config.data.path,
  }


# ------------------------------------------------------------------------- train
def train_and_evaluate(exp, workdir: str, pretrained=None) -> Dict[str, float]:
  """Trains from the latest checkpoint (or from scratch) to config.training.num_iters.

  Raises TrainingError when the run cannot go on (a save or write failed: the message
  names the workdir, its free space and the last complete checkpoint), and
  preemption.Preempted after saving on SIGTERM.
  """
  config = exp.config
  tc = config.training
  mesh = parallel.make_mesh()
  ckpt = ckpt_lib.Checkpointer(
    workdir, keep=tc.keep_checkpoints, best_metric=tc.best_metric, async_save=tc.async_checkpoints
  )
  try:
    try:
      result = _resume_and_train(exp, workdir, mesh, ckpt, pretrained)
    except BaseException:
      ckpt.close(quiet=True)  # the error under way is the one to report
      raise
    ckpt.close()  # waits for pending asynchronous saves
    return result
  except ckpt_lib.SaveError as e:
    raise TrainingError(str(e)) from None
  except OSError as e:  # a write of the loop's own (metrics, TensorBoard, figures): e.g. the disk is full
    if e.errno not in _STORAGE_ERRNOS:
      raise
    last = ckpt_lib.latest_step(workdir)
    raise TrainingError(
      f"writing to the workdir {workdir} failed ({type(e).__name__}: {e}); it has "
      f"{ckpt_lib.free_space(workdir)} free; the last complete checkpoint is "
      f"{'step ' + str(last) if last is not None else 'none'}; free some space (or fix the storage) and run "
      f"the same command again to resume from it"
    ) from None


def _resume_and_train(exp, workdir, mesh, ckpt, pretrained):
  tc = exp.config.training
  state, start, meta = restore_or_init(exp, workdir, mesh, ckpt, pretrained)
  pending_eval = meta is not None and _eval_pending(workdir, meta)
  if meta is not None:
    logging.info("resuming from step %d", start)
    _warn_if_data_changed(exp.config, meta)
    if start >= tc.num_iters and not pending_eval:
      logging.info(
        "the checkpoint is at step %d >= config.training.num_iters=%d: nothing to train "
        "(raise num_iters to continue; --mode=eval to re-evaluate)",
        start,
        tc.num_iters,
      )
      return dict(meta.get("metrics", {}))
  ckpt.prune_after(start)
  return _train_loop(exp, workdir, mesh, ckpt, state, start, pending_eval)


def _eval_pending(workdir, meta) -> bool:
  """The checkpoint was saved on SIGTERM with its evaluation dropped, and no later run has done it."""
  if not meta.get("eval_pending"):
    return False
  path = os.path.join(workdir, "metrics.jsonl")
  done = [r for r in writers.read_jsonl(path) if r.get("kind") == "eval" and r.get("step") == meta["step"]]
  return not done


def _train_loop(exp, workdir, mesh, ckpt, state, start, pending_eval=False) -> Dict[str, float]:
  config = exp.config
  tc = config.training
  watcher = preemption.current()
  writer = writers.MetricWriter(workdir, purge_step=start + 1 if start else None)
  try:
    writer.truncate_after(start)
    if jax.process_index() == 0:
      io.atomic_write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=1))
    train_step = compile_train_step(exp, mesh)
    evals = evaluators.build(exp)
    t0 = time.time()
    if pending_eval:  # dropped by SIGTERM before the checkpoint at ``start`` was saved: done now
      metrics = _pending_evaluation(exp, evals, ckpt, state, workdir, start, writer, watcher)
      if start >= tc.num_iters:
        ckpt.wait()
        writer.close()
        if jax.process_index() == 0:
          _announce(workdir, metrics, time.time() - t0, _start_record(workdir), exp)
        return metrics
    _evaluate_at_start(exp, evals, ckpt, state, workdir, start, writer, watcher)
    if watcher.requested:  # during compilation (or restore): nothing trained since the checkpoint
      raise preemption.Preempted(f"preempted before training; the checkpoint of step {start} stands")
    progress = writers.Progress(tc.num_iters, start)
    check_every = max(1, min(tc.log_every, tc.max_consecutive_skips))
    last_metrics, skipped = {}, int(jax.device_get(state.skipped))
    # host batches are prepared ahead in the background and copied to the devices two steps ahead
    batches = prefetch_to_device(exp.data.iterate(start, tc.num_iters - start), parallel.batch_sharding(mesh))
    for step, batch in zip(range(start, tc.num_iters), batches):
      state, metrics = train_step(state, batch)
      done = step + 1
      if done % check_every == 0 or done == tc.num_iters:
        _check_skips(state, tc.max_consecutive_skips, done)
      record = done % tc.log_every == 0 or done == tc.num_iters or done == 1
      if record or done == start + 1:  # + a first progress line after a resume
        last_metrics, skipped = _log_step(metrics, done, tc.num_iters, record, progress, writer, skipped)
      if done == tc.num_iters:
        break
      if watcher.should_stop(done):  # every process, every step (the multi-process sync point)
        _save_and_stop(ckpt, exp, done, state, writer, eval_pending=bool(tc.eval_every and done % tc.eval_every == 0))
      eval_metrics = {}
      if tc.eval_every and done % tc.eval_every == 0:
        eval_metrics = _evaluate_or_drop(exp, evals, state, workdir, done, writer, watcher, final=False)
        if eval_metrics is None:
          _save_and_stop(ckpt, exp, done, state, writer, eval_pending=True)
      if done % tc.checkpoint_every == 0 or eval_metrics:
        _save(ckpt, exp, done, state, eval_metrics)
    final = _evaluate_and_save_final(exp, evals, ckpt, state, workdir, writer, watcher)
  except BaseException:
    writer.close(quiet=True)  # the error under way is the one to report
    raise
  writer.close()
  if jax.process_index() == 0:
    _announce(workdir, final, time.time() - t0, _start_record(workdir), exp)
  return dict(last_metrics, **final)


def _pending_evaluation(exp, evals, ckpt, state, workdir, start, writer, watcher):
  """The evaluation of step ``start`` that SIGTERM dropped before its checkpoint was saved, done and saved now."""
  tc = exp.config.training
  metrics = _evaluate_or_drop(exp, evals, state, workdir, start, writer, watcher, final=start >= tc.num_iters)
  if metrics is None:
    raise preemption.Preempted(f"preempted during the evaluation of step {start}; it is done on restart")
  ckpt.save_best(start, state, metrics, _save_meta(exp, start, start >= tc.num_iters))
  return metrics


def _evaluate_at_start(exp, evals, ckpt, state, workdir, start, writer, watcher):
  """The starting sampler (e.g. the pretrained DDPM), evaluated and saved too so that best-by-metric can pick it.

  Not again after a resume from that checkpoint, and not when the final evaluation is step 0.
  """
  tc = exp.config.training
  if start == 0 and tc.eval_at_start and tc.num_iters > 0 and ckpt.latest_step() is None:
    start_metrics = _evaluate_or_drop(exp, evals, state, workdir, 0, writer, watcher, final=False)
    if start_metrics is None:
      raise preemption.Preempted("preempted during the evaluation of step 0; nothing to save yet")
    if tc.best_metric:
      _save(ckpt, exp, 0, state, start_metrics)


def _log_step(metrics, done, num_iters, record, progress, writer, skipped):
  """One logged step: the metrics on the host with the progress, written when ``record``, and the log line.

  Returns (the flat metrics, the updated count of skipped updates).
  """
  flat = writers.flatten_metrics(parallel.to_host(metrics))
  flat.update(progress(done))
  if record:
    writer.write(done, flat)
  writers.log_line(done, num_iters, flat, _LOG_KEYS)
  skipped = _report_skips(flat, skipped)
  return flat, skipped


def _evaluate_and_save_final(exp, evals, ckpt, state, workdir, writer, watcher):
  """The final evaluation and checkpoint (waited for); on SIGTERM during it, the state is saved and Preempted raised."""
  num_iters = exp.config.training.num_iters
  final = _evaluate_or_drop(exp, evals, state, workdir, num_iters, writer, watcher, final=True)
  if final is None:
    _save_and_stop(ckpt, exp, num_iters, state, writer, eval_pending=True)
  _save(ckpt, exp, num_iters, state, final, final=True)
  ckpt.wait()
  return final


def _evaluate_or_drop(exp, evals, state, workdir, step, writer, watcher, final):
  """``evaluate``, or None if SIGTERM arrived during it (one process: the evaluation is dropped)."""
  try:
    with watcher.interruptible():
      return evaluate(exp, evals, state, workdir, step, writer, final=final)
  except preemption.EvaluationInterrupted:
    logging.warning("SIGTERM during the evaluation of step %d: dropped (done again on restart)", step)
    return None


def _save_and_stop(ckpt, exp, step, state, writer, eval_pending=False):
  """On preemption: save ``step`` (unless saved already), wait for it, flush the logs, raise Preempted."""
  if ckpt.latest_step() != step:
    _save(ckpt, exp, step, state, {}, eval_pending=eval_pending)
  ckpt.wait()
  writer.close()
  raise preemption.Preempted(
    f"preempted: saved checkpoint {step} in {os.path.join(ckpt.workdir, 'checkpoints')}; "
    f"run the same command to resume from it"
  )


def _save_meta(exp, step, final=False, eval_pending=False):
  return {
    "data_position": data_position(exp.config, step),
    "final": final,
    "eval_pending": eval_pending,
    "config": exp.config.to_json_best_effort(),
    **exp.data.checkpoint_meta(),
  }


def _save(ckpt, exp, step, state, metrics, final=False, eval_pending=False):
  try:
    ckpt.save(step, state, metrics=metrics, meta=_save_meta(exp, step, final, eval_pending))
  except ckpt_lib.NonFiniteStateError as e:
    raise TrainingError(f"{e}; the last good checkpoint is step {ckpt.latest_step()}") from None


def _check_skips(state, limit: int, step: int):
  run = int(jax.device_get(state.max_skip_run))
  if run >= limit:
    mask = int(jax.device_get(state.nonfinite_mask))
    names = [n for i, n in enumerate(dxmi.NONFINITE_QUANTITIES) if mask >> i & 1]
    raise TrainingError(
      f"stopping at step {step}: {run} consecutive iterations had non-finite values in "
      f"{', '.join(names) or 'a loss or gradient'} (config.training.max_consecutive_skips={limit}); "
      f"lower the learning rates or check the data"
    )


def _report_skips(flat, previous: int) -> int:
  """A warning when iterations were skipped since the previous progress line."""
  total = int(flat.get("nonfinite/skipped_total", previous))
  if total > previous:
    bad = [q for q in dxmi.NONFINITE_QUANTITIES if flat.get(f"nonfinite/{q}")]
    logging.warning(
      "%d iteration(s) skipped for non-finite values since the last report, %d in total%s",
      total - previous,
      total,
      f" (this step: {', '.join(bad)})" if bad else "",
    )
  return total


def _warn_if_data_changed(config, meta):
  saved = meta.get("data_position") or {}
  now = data_position(config, meta["step"])
  changed = [k for k in ("seed", "batch_size", "data", "path") if k in saved and saved[k] != now[k]]
  if changed:
    logging.warning(
      "resuming with a different %s than the checkpoint was trained with: the data stream "
      "differs from an uninterrupted run's",
      ", ".join(changed),
    )


def _start_record(workdir) -> Dict[str, float]:
  """The evaluation record of step 0 in metrics.jsonl (also after a resume), or {}."""
  path = os.path.join(workdir, "metrics.jsonl")
  recs = (
    [r for r in writers.read_jsonl(path) if r.get("kind") == "eval" and r["step"] == 0] if os.path.exists(path) else []
  )
  return recs[-1] if recs else {}


def _fmt_pm(rec, key):
  if rec.get(key) is None:
    return "-"
  std = rec.get(key + "_std")
  return f"{rec[key]:.4f}" + ("" if std is None else f" ± {std:.4f}")


def before_after_lines(exp, start, final):
  """Vector runs: the starting and the trained sampler side by side, with the floor and the ideal."""
  if "sw" not in final:
    return []
  T = exp.dxmi.num_steps
  pretrained = bool(exp.config.init.policy_checkpoint or exp.config.init.pretrain_first)
  first = f"DDPM T={T} (pretrained, step 0)" if pretrained else f"initial policy T={T} (step 0)"
  rows = [(f"DxMI T={T} (step {exp.config.training.num_iters})", _fmt_pm(final, "sw"), _fmt_pm(final, "auc"))]
  if start:  # the pretrained DDPM has no energy: its AUC would score an untrained value network
    rows.insert(0, (first, _fmt_pm(start, "sw"), "-" if pretrained else _fmt_pm(start, "auc")))
  n = exp.config.eval.sw_draws
  rows.append(
    (f"data vs data (floor, {n} draws) / true density", _fmt_pm(final, "sw_floor"), _fmt_pm(final, "auc_ideal"))
  )
  width = max(len(r[0]) for r in rows)
  lines = [f"  {'sampler':<{width}}  {'SW (mean ± std over draws)':<26}  AUC of -E vs uniform noise"]
  lines += [f"  {a:<{width}}  {b:<26}  {c}" for a, b, c in rows]
  return lines


def _announce(workdir, final, seconds, start=None, exp=None):
  lines = [
    f"done in {seconds:.0f} s.",
    f"  metrics:     {os.path.join(workdir, 'metrics.jsonl')}",
    f"  tensorboard: {os.path.join(workdir, 'tensorboard')}",
    f"  checkpoints: {os.path.join(workdir, 'checkpoints')}",
  ]
  for name in ("figure.png", "samples_grid.png"):
    if os.path.exists(os.path.join(workdir, name)):
      lines.append(f"  figure:      {os.path.join(workdir, name)}")
  if final:
    lines.append("  final: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float)))
  if exp is not None and final:
    lines += before_after_lines(exp, start or {}, final)
  print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------- evaluate
def evaluate(exp, evals, state, workdir, step, writer, final: bool) -> Dict[str, float]:
  """Runs the run's evaluators (``evaluators.build``, built once) and writes one evaluation record."""
  if exp.is_vector:
    # the (small) state as host arrays: every process evaluates locally, identically,
    # with no cross-host arrays in the evaluation's own jits
    state = parallel.to_host(state)
  metrics = {}
  for evaluator in evals:
    metrics.update(evaluator(state, step, final=final, workdir=workdir, writer=writer))
  if metrics:
    writer.write(step, metrics, kind="eval")
    logging.info("eval @%d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    best = exp.config.training.best_metric
    if best and ckpt_lib.parse_best_metric(best)[0] not in metrics:
      logging.warning("config.training.best_metric=%r is not among the evaluation metrics %s", best, sorted(metrics))
  return metrics
