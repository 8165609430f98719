"""``--mode=score``: the energy of every row of a file under a trained workdir's latest checkpoint.

    python main.py --config=configs/anomaly.py --workdir=W --mode=score \
        --config.score.input=IN.npz --config.score.output=OUT.npy

writes OUT.npy: (N,) float32, one energy per row of IN.npz's ``X`` in row order, higher = more
anomalous.  The network and the standardisation are the ones the workdir was trained with: the
architecture comes from the config saved in the checkpoint's meta (so the training run's
``--config.*`` overrides need not be repeated) and the transform from its ``data_transform``.
Every check (the options, the checkpoint, the file, its key, shape, D and values) runs before
anything is computed; a failure raises ``ConfigError`` naming the problem and writes nothing.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import experiment, parallel, samples
from dxmi_jax.anomaly import data as anomaly_data

ConfigError = experiment.ConfigError


def _saved_config(meta, cli_config):
  """The training run's config (from the checkpoint meta) with this call's score.* options."""
  text = meta.get("config")
  if not text:
    return cli_config
  saved = ml_collections.ConfigDict(json.loads(text) if isinstance(text, str) else text)
  with saved.unlocked():
    saved.score = cli_config.score
  return saved


def check_inputs(config, workdir):
  """(config to build, transform, X) after every check; ConfigError otherwise."""
  sc = config.score
  if not sc.input:
    raise ConfigError("config.score.input: required with --mode=score (an .npz file holding X, (N, D))")
  if not sc.output:
    raise ConfigError("config.score.output: required with --mode=score (the .npy file to write)")
  if not sc.output.endswith(".npy"):
    raise ConfigError(f"config.score.output: {sc.output} must end with .npy")
  out_dir = os.path.dirname(os.path.abspath(sc.output))
  if not os.path.isdir(out_dir):
    raise ConfigError(f"config.score.output: the directory {out_dir} does not exist")
  if sc.batch_size < 1:
    raise ConfigError(f"config.score.batch_size must be >= 1, got {sc.batch_size}")
  if ckpt_lib.latest_step(workdir) is None:
    raise ConfigError(
      f"--workdir: no checkpoint under {os.path.join(workdir, 'checkpoints')} to score with (train first)"
    )
  from dxmi_jax import modes  # pylint: disable=import-outside-toplevel  (modes imports this module)

  meta = ckpt_lib.read_meta(workdir, modes.usable_checkpoint(None, workdir, move_aside=False))
  if "data_transform" not in meta:
    raise ConfigError(
      f"--workdir: the checkpoint in {workdir} was not trained on npz vector data "
      f"(config.data.name=npz), so it has no input transform to score with"
    )
  transform = anomaly_data.Standardizer.from_json(meta["data_transform"])
  dim = int(meta.get("data_dim", transform.mean.shape[0]))
  try:
    x = anomaly_data.load_vectors(sc.input, what="config.score.input", dim=dim)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return _saved_config(meta, config), transform, x


def run(config, workdir: str):
  """Scores config.score.input into config.score.output; returns the output path."""
  workdir = os.path.abspath(workdir)
  config, transform, x = check_inputs(config, workdir)
  dim = x.shape[1]
  try:
    exp = experiment.assemble(
      config, None, (config.training.batch_size, dim), {"out_dim": dim} if config.policy.net.arch == "mlp" else {}
    )
  except ValueError as e:
    raise ConfigError(str(e)) from None
  problem = ckpt_lib.check_compatible(workdir, exp.abstract_state())
  if problem:
    raise ConfigError(f"--workdir: the checkpoint does not fit the network of its saved config ({problem})")
  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), exp.abstract_state())
  state, _ = ckpt_lib.restore_step(workdir, ckpt_lib.select(workdir).step, abstract)  # the newest that restores
  scores = energies(exp.energy_fn(parallel.to_host(state)), transform(x), config.score.batch_size)
  if jax.process_index() == 0:
    samples.atomic_write(config.score.output, lambda f: np.save(f, scores), ".npy")
    print(f"wrote {scores.shape[0]} scores to {config.score.output}", flush=True)
  return config.score.output


def energies(energy_fn, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
  """(N,) float32 energy_fn over x in fixed-size batches (the last one padded: one compile)."""
  fn = jax.jit(energy_fn)
  b = min(batch_size, x.shape[0])
  out = []
  for i in range(0, x.shape[0], b):
    chunk = x[i : i + b]
    n = chunk.shape[0]
    if n < b:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, 0)], 0)
    out.append(np.asarray(fn(jnp.asarray(chunk)))[:n])
  return np.concatenate(out).astype(np.float32)
