"""The run modes, main.py's entry: ``run(config, workdir, mode)``.

  train     DxMI training (``train.train_and_evaluate``); resumes from <workdir>/checkpoints if
            present, else starts from config.init.* (pretrained weights; with
            config.init.pretrain_first, a DDPM pretrained into the workdir first) or from scratch
  pretrain  DDPM epsilon-prediction pretraining of the policy network (<workdir>/pretrain)
  sample    restore the newest checkpoint that restores (docs/faults.md) and write <workdir>/samples.npz
  eval      the same, and write an evaluation record
  score     energies of config.score.input's rows under the latest checkpoint, into
            config.score.output: a mode that a project provides (``register``; the anomaly
            project's is dxmi_jax/proj/anomaly/score.py)

Every check on user input (config, pretrained weights, a resumed checkpoint's
architecture) runs before the workdir is touched: bad input raises ConfigError and
leaves nothing on disk.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import evaluators, experiment, generation, io, parallel, preemption, projects, train, writers
from dxmi_jax.errors import ConfigError

MODES = ("train", "pretrain", "sample", "eval", "score")
#: modes that projects implement: name -> {project: fn(config, workdir)}
_PROJECT_MODES: dict = {}


def register(mode: str, project: str, fn) -> None:
  """``fn(config, workdir)`` runs ``--mode=<mode>`` for configs of ``project``."""
  if mode not in MODES:
    raise ValueError(f"{mode!r} is not a mode main.py accepts ({MODES})")
  _PROJECT_MODES.setdefault(mode, {})[project] = fn


#: evaluation metrics of vector-data runs that can select the best checkpoint
VECTOR_EVAL_METRICS = ("sw", "auc")


def run(config, workdir: str, mode: str = "train"):
  """Runs ``mode``; in train/pretrain SIGTERM saves and stops at an iteration boundary, raising
  ``preemption.Preempted`` (docs/faults.md)."""
  if mode not in MODES:
    raise ConfigError(f"--mode: expected one of {MODES}, got {mode!r}")
  if not workdir:
    raise ConfigError("--workdir: required")
  try:
    parallel.maybe_initialize_distributed()  # first: the SIGTERM watcher asks how many processes there are
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if mode in ("train", "pretrain"):
    with preemption.watch():
      return _run(config, workdir, mode)
  return _run(config, workdir, mode)


def _run(config, workdir: str, mode: str):
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # one log: process 0's
  projects.load(config)
  if mode in _PROJECT_MODES or mode == "score":
    provided = _PROJECT_MODES.get(mode, {})
    fn = provided.get(config.get("project", ""))
    if fn is None:
      raise ConfigError(
        f"--mode={mode}: provided by the projects {sorted(provided)} (config.project), "
        f"not by config.project={config.get('project', '')!r}"
      )
    return fn(config, workdir)
  exp = experiment.build(config, mode)  # validates before anything is written
  validate_run(config, exp)
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir: {workdir} exists and is not a directory")
  latest = ckpt_lib.latest_step(workdir)
  try:
    parallel.check_same_on_all_processes(
      -1 if latest is None else latest, f"the latest checkpoint step under {workdir}"
    )
  except ValueError as e:
    raise ConfigError(f"--workdir: {e}; it must be a directory every host shares") from None
  pretrained, step = None, None
  if mode in ("sample", "eval"):
    if latest is None:
      raise ConfigError(
        f"--workdir: no checkpoint under {os.path.join(workdir, 'checkpoints')} to {mode} from (train first)"
      )
    step = usable_checkpoint(exp.abstract_state(), workdir, move_aside=False)
  elif mode == "train":
    if latest is not None:
      # damaged newer ones move aside: Orbax would refuse to save their steps again
      step = usable_checkpoint(exp.abstract_state(), workdir, move_aside=True)
      _check_best_restores(workdir, exp.config.training.best_metric)
      if config.init.policy_checkpoint or config.init.value_checkpoint:
        logging.warning("%s has checkpoints: resuming from them; config.init.* is ignored", workdir)
    else:
      policy_path = _pretrain_if_missing(exp, workdir) if pretrains_first(config) else None
      pretrained = train.load_pretrained(exp, policy_path)  # checks that the weights fit the architecture
      pretrained = projects.run_stages(exp, workdir, pretrained)
  os.makedirs(workdir, exist_ok=True)
  if mode == "train":
    return train.train_and_evaluate(exp, workdir, pretrained)
  if mode == "pretrain":
    from dxmi_jax import pretrain  # pylint: disable=import-outside-toplevel

    return pretrain.pretrain(exp, workdir)
  if mode == "sample":
    return sample(exp, workdir, step)
  return evaluate_checkpoint(exp, workdir, step)


def usable_checkpoint(abstract_state, workdir, move_aside: bool) -> int:
  """The step to restore: ``checkpoint.select``'s newest checkpoint that restores and fits.

  One warning line per damaged newer checkpoint (its step and why); with ``move_aside``
  (training) process 0 renames each to ``<step>.damaged`` first.  ConfigError (nothing
  changed) when none restores or they do not fit the configured architecture.
  """
  ckdir = os.path.join(workdir, "checkpoints")
  try:
    sel = ckpt_lib.select(workdir, abstract_state)
  except ckpt_lib.UnusableCheckpoints as e:
    raise ConfigError(f"--workdir: {e}; nothing was changed") from None
  except ckpt_lib.CheckpointMismatch as e:
    raise ConfigError(
      f"--workdir: the checkpoint in {ckdir} does not fit the configured architecture "
      f"({str(e).split(': ', 1)[1]}); use the config it was trained with or a new workdir"
    ) from None
  try:
    parallel.check_same_on_all_processes(sel.step, f"the newest checkpoint under {ckdir} that restores")
  except ValueError as e:
    raise ConfigError(f"--workdir: {e}") from None
  for step, reason in sel.damaged:
    if move_aside and jax.process_index() == 0:
      where = f"moved aside to {os.path.basename(ckpt_lib.move_aside(ckdir, step))}"
    else:
      where = "left in place" if not move_aside else "moved aside by process 0"
    logging.warning(
      "checkpoint %d in %s does not restore (%s); %s; using step %d", step, ckdir, reason, where, sel.step
    )
  if move_aside and sel.damaged and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    multihost_utils.sync_global_devices("dxmi_jax: damaged checkpoints moved aside")
  return sel.step


def _check_best_restores(workdir, best_metric):
  """A resumed run with best_metric: a damaged checkpoints_best is an error (it keeps one step)."""
  if not best_metric or not ckpt_lib.committed_steps(workdir, best=True):
    return
  try:
    ckpt_lib.select(workdir, best=True)
  except ckpt_lib.UnusableCheckpoints as e:
    raise ConfigError(
      f"--workdir: {e}; move it aside (or delete it) to go on without it; nothing was changed"
    ) from None


def pretrains_first(config):
  """Whether ``train`` DDPM-pretrains into the workdir before DxMI (config.init.pretrain_first):
  True always, False never, "auto" unless config.init.policy_checkpoint names a starting policy."""
  value = config.init.pretrain_first
  if value == "auto":
    return not config.init.policy_checkpoint
  return value is True


def _pretrain_if_missing(exp, workdir):
  """config.init.pretrain_first: DDPM-pretrain into <workdir>/pretrain unless it is there, then
  start DxMI from it (the paper's job: fine-tune a pretrained diffusion model)."""
  from dxmi_jax import pretrain  # pylint: disable=import-outside-toplevel

  done = os.path.join(workdir, "pretrain", "meta.json")  # written last, atomically
  if os.path.exists(done):
    logging.info("reusing the pretrained DDPM in %s", os.path.dirname(done))
  else:
    os.makedirs(workdir, exist_ok=True)
    print(
      f"pretraining a DDPM ({exp.config.pretrain.num_iters} iterations) into "
      f"{os.path.dirname(done)}; DxMI then fine-tunes it",
      flush=True,
    )
    pretrain.pretrain(exp, workdir)
  return workdir


def validate_run(config, exp):
  """Checks of the loop's own options (experiment.validate checks the rest, the batch sizes' divisibility
  by the number of devices included); ConfigError each."""
  tc = config.training
  for key, lo in (
    ("log_every", 1),
    ("keep_checkpoints", 1),
    ("max_consecutive_skips", 1),
    ("eval_every", 0),
    ("fsdp_min_size", 1),
  ):
    if tc[key] < lo:
      raise ConfigError(f"config.training.{key} must be >= {lo}, got {tc[key]}")
  pf = config.init.pretrain_first
  if not (pf is True or pf is False or pf == "auto"):  # `is`: 1 and 0 are not accepted as booleans
    raise ConfigError(f"config.init.pretrain_first: expected True, False or 'auto', got {pf!r}")
  if pf is True and config.init.policy_checkpoint:
    raise ConfigError(
      f"config.init.pretrain_first: True together with config.init.policy_checkpoint="
      f"{config.init.policy_checkpoint!r}; True pretrains into the workdir, so use one of them "
      f"('auto' starts from the checkpoint when one is given)"
    )
  if tc.best_metric:
    try:
      name, _ = ckpt_lib.parse_best_metric(tc.best_metric)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    if exp.is_vector and name not in VECTOR_EVAL_METRICS:
      raise ConfigError(
        f"config.training.best_metric: {name!r} is not an evaluation metric of "
        f"vector data; expected one of {VECTOR_EVAL_METRICS}"
      )


def _restore(exp, workdir, step=None):
  """The state of checkpoint ``step`` (default: the newest that restores, ``usable_checkpoint``)."""
  if step is None:
    step = usable_checkpoint(exp.abstract_state(), workdir, move_aside=False)
  mesh = parallel.make_mesh()
  state, _ = ckpt_lib.restore_step(workdir, step, train.abstract_on(exp, mesh))
  return state, mesh


def evaluate_checkpoint(exp, workdir, step=None):
  state, _ = _restore(exp, workdir, step)
  # its own file: the training run's metrics.jsonl already holds the final evaluation of this step
  writer = writers.MetricWriter(os.path.join(workdir, "eval"), tensorboard=False)
  step = int(jax.device_get(state.step))
  out = train.evaluate(exp, evaluators.build(exp), state, workdir, step, writer, final=True)
  writer.close()
  if jax.process_index() == 0:
    print(json.dumps({"step": step, **out}), flush=True)
  return out


# ------------------------------------------------------------------------ sample
def sample(exp, workdir, step=None):
  """Writes <workdir>/samples.npz from the newest checkpoint that restores (arr_0; arr_1 labels if conditional)."""
  state, mesh = _restore(exp, workdir, step)
  if not exp.is_vector:
    return _sample_images(exp, state, workdir, mesh)
  sc = exp.config.sample
  gen = generation.experiment_generator(exp, sc.batch_size, mesh)
  x = generation.sample_many(gen, state.policy.params, sc.seed, sc.num, sc.batch_size, value_params=state.value.params)
  path = os.path.join(workdir, "samples.npz")
  if jax.process_index() == 0:
    io.atomic_savez(path, arr_0=x.astype(np.float32))
    print(f"wrote {x.shape[0]} samples to {path}", flush=True)
  return path


def _sample_images(exp, state, workdir, mesh):
  """Images: <workdir>/samples.npz (uint8 arr_0, arr_1 labels) and samples_grid.png."""
  from dxmi_jax import image_export  # pylint: disable=import-outside-toplevel

  sc = exp.config.sample
  imgs, labels = generation.generate_images(exp, state, sc.num, sc.seed, mesh)
  path = os.path.join(workdir, "samples.npz")
  if jax.process_index() == 0:
    image_export.save_samples_npz(path, imgs, labels)
    image_export.save_image_grid(
      os.path.join(workdir, "samples_grid.png"),
      np.repeat(imgs[:64], 3, -1) if imgs.shape[-1] == 1 else imgs[:64],
      nrow=8,
    )
    print(f"wrote {imgs.shape[0]} samples {imgs.shape[1:]} to {path} (and samples_grid.png)", flush=True)
  logging.info("sampled %d images", imgs.shape[0])
  return path
