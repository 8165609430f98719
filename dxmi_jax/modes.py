"""The run modes, main.py's entry: ``run(config, workdir, mode)``.

  train     DxMI training (``train.train_and_evaluate``); resumes from <workdir>/checkpoints if
            present, else starts from config.init.* (pretrained weights; with
            config.init.pretrain_first, a DDPM pretrained into the workdir first) or from scratch
  pretrain  DDPM epsilon-prediction pretraining of the policy network (<workdir>/pretrain)
  sample    restore the latest checkpoint and write <workdir>/samples.npz
  eval      restore the latest checkpoint and write an evaluation record
  score     energies of config.score.input's rows under the latest checkpoint, into
            config.score.output (vector data; dxmi_jax/anomaly/score.py)

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
from dxmi_jax import evaluators, experiment, io, parallel, sampling, train, writers

MODES = ("train", "pretrain", "sample", "eval", "score")
#: evaluation metrics of vector-data runs that can select the best checkpoint
VECTOR_EVAL_METRICS = ("sw", "auc")


def run(config, workdir: str, mode: str = "train"):
  if mode not in MODES:
    raise experiment.ConfigError(f"--mode: expected one of {MODES}, got {mode!r}")
  if not workdir:
    raise experiment.ConfigError("--workdir: required")
  try:
    parallel.maybe_initialize_distributed()
  except ValueError as e:
    raise experiment.ConfigError(str(e)) from None
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # one log: process 0's
  if mode == "score":  # energies of new samples under a trained workdir (anomaly detection)
    from dxmi_jax.anomaly import score  # pylint: disable=import-outside-toplevel

    return score.run(config, workdir)
  exp = experiment.build(config, mode)  # validates before anything is written
  validate_run(config, exp)
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise experiment.ConfigError(f"--workdir: {workdir} exists and is not a directory")
  latest = ckpt_lib.latest_step(workdir)
  try:
    parallel.check_same_on_all_processes(
      -1 if latest is None else latest, f"the latest checkpoint step under {workdir}"
    )
  except ValueError as e:
    raise experiment.ConfigError(f"--workdir: {e}; it must be a directory every host shares") from None
  pretrained = None
  if mode in ("sample", "eval"):
    if latest is None:
      raise experiment.ConfigError(
        f"--workdir: no checkpoint under {os.path.join(workdir, 'checkpoints')} to {mode} from (train first)"
      )
    _check_checkpoint_fits(exp, workdir)
  elif mode == "train":
    if latest is not None:
      _check_checkpoint_fits(exp, workdir)
      if config.init.policy_checkpoint or config.init.value_checkpoint:
        logging.warning("%s has checkpoints: resuming from them; config.init.* is ignored", workdir)
    else:
      policy_path = _pretrain_if_missing(exp, workdir) if pretrains_first(config) else None
      pretrained = train.load_pretrained(exp, policy_path)  # checks that the weights fit the architecture
  os.makedirs(workdir, exist_ok=True)
  if mode == "train":
    return train.train_and_evaluate(exp, workdir, pretrained)
  if mode == "pretrain":
    from dxmi_jax import pretrain  # pylint: disable=import-outside-toplevel

    return pretrain.pretrain(exp, workdir)
  if mode == "sample":
    return sample(exp, workdir)
  return evaluate_checkpoint(exp, workdir)


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
  """Checks of the loop's own options (experiment.validate checks the rest); ConfigError each."""
  tc = config.training
  for key, lo in (
    ("log_every", 1),
    ("keep_checkpoints", 1),
    ("max_consecutive_skips", 1),
    ("eval_every", 0),
    ("fsdp_min_size", 1),
  ):
    if tc[key] < lo:
      raise experiment.ConfigError(f"config.training.{key} must be >= {lo}, got {tc[key]}")
  try:
    parallel.check_batch_divisible(tc.batch_size)
  except ValueError as e:
    raise experiment.ConfigError(str(e)) from None
  pf = config.init.pretrain_first
  if not (pf is True or pf is False or pf == "auto"):  # `is`: 1 and 0 are not accepted as booleans
    raise experiment.ConfigError(f"config.init.pretrain_first: expected True, False or 'auto', got {pf!r}")
  if pf is True and config.init.policy_checkpoint:
    raise experiment.ConfigError(
      f"config.init.pretrain_first: True together with config.init.policy_checkpoint="
      f"{config.init.policy_checkpoint!r}; True pretrains into the workdir, so use one of them "
      f"('auto' starts from the checkpoint when one is given)"
    )
  if tc.best_metric:
    try:
      name, _ = ckpt_lib.parse_best_metric(tc.best_metric)
    except ValueError as e:
      raise experiment.ConfigError(str(e)) from None
    if exp.is_vector and name not in VECTOR_EVAL_METRICS:
      raise experiment.ConfigError(
        f"config.training.best_metric: {name!r} is not an evaluation metric of "
        f"vector data; expected one of {VECTOR_EVAL_METRICS}"
      )


def _check_checkpoint_fits(exp, workdir):
  problem = ckpt_lib.check_compatible(workdir, exp.abstract_state())
  if problem:
    raise experiment.ConfigError(
      f"--workdir: the checkpoint in {os.path.join(workdir, 'checkpoints')} does not fit the configured "
      f"architecture ({problem}); use the config it was trained with or a new workdir"
    )


def _restore_latest(exp, workdir):
  mesh = parallel.make_mesh()
  ckpt = ckpt_lib.Checkpointer(workdir, async_save=False, read_only=True)
  try:
    state, _, _ = train.restore_or_init(exp, workdir, mesh, ckpt)
  finally:
    ckpt.close()
  return state, mesh


def evaluate_checkpoint(exp, workdir):
  state, _ = _restore_latest(exp, workdir)
  # its own file: the training run's metrics.jsonl already holds the final evaluation of this step
  writer = writers.MetricWriter(os.path.join(workdir, "eval"), tensorboard=False)
  step = int(jax.device_get(state.step))
  out = train.evaluate(exp, evaluators.build(exp), state, workdir, step, writer, final=True)
  writer.close()
  if jax.process_index() == 0:
    print(json.dumps({"step": step, **out}), flush=True)
  return out


# ------------------------------------------------------------------------ sample
def sample(exp, workdir):
  """Writes <workdir>/samples.npz from the latest checkpoint (arr_0; arr_1 labels if conditional)."""
  state, mesh = _restore_latest(exp, workdir)
  if not exp.is_vector:
    return _sample_images(exp, state, workdir, mesh)
  sc = exp.config.sample
  gen = sampling.experiment_generator(exp, sc.batch_size, mesh)
  x = sampling.sample_many(gen, state.policy.params, sc.seed, sc.num, sc.batch_size, value_params=state.value.params)
  path = os.path.join(workdir, "samples.npz")
  if jax.process_index() == 0:
    io.atomic_savez(path, arr_0=x.astype(np.float32))
    print(f"wrote {x.shape[0]} samples to {path}", flush=True)
  return path


def _sample_images(exp, state, workdir, mesh):
  """Images: <workdir>/samples.npz (uint8 arr_0, arr_1 labels) and samples_grid.png."""
  from dxmi_jax import samples as samples_lib  # pylint: disable=import-outside-toplevel

  sc = exp.config.sample
  imgs, labels = sampling.generate_images(exp, state, sc.num, sc.seed, mesh)
  path = os.path.join(workdir, "samples.npz")
  if jax.process_index() == 0:
    samples_lib.save_samples_npz(path, imgs, labels)
    samples_lib.save_image_grid(
      os.path.join(workdir, "samples_grid.png"),
      np.repeat(imgs[:64], 3, -1) if imgs.shape[-1] == 1 else imgs[:64],
      nrow=8,
    )
    print(f"wrote {imgs.shape[0]} samples {imgs.shape[1:]} to {path} (and samples_grid.png)", flush=True)
  logging.info("sampled %d images", imgs.shape[0])
  return path
