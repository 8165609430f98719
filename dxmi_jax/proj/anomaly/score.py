"""``--mode=score``: energies of new data under a trained workdir's latest checkpoint.

    python main.py --config=configs/anomaly.py --workdir=W --mode=score \
        --config.score.input=IN.npz --config.score.output=OUT.npy

Vectors: writes OUT.npy, (N,) float32, one energy per row of IN.npz's ``X`` in row order,
higher = more anomalous.  Feature maps: when IN is a UniAD-style file (``feature_align`` or a
4-D ``features``, see data.py), every location is scored as one vector and OUT must end with
``.npz``; it holds ``image_score`` (N,), the maximum of each (H, W) energy map (the authors'
image score), and ``pixel_map`` (N, H_mask, W_mask), the map bilinearly upsampled to the size
of IN's ``mask`` (the map's own size when IN has none), plus ``label``, ``clsname`` and ``auroc``,
a JSON string of the image (and, with masks, pixel) AUROC of every category whose maps hold both
labels and their mean (the report of the authors' unified model), which is also printed.  The network and the standardisation are the ones the workdir was trained with: the
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
from dxmi_jax import experiment, io, modes, parallel
from dxmi_jax.errors import ConfigError
from dxmi_jax.proj.anomaly import data as anomaly_data


def _saved_config(meta, cli_config):
  """The training run's config (from the checkpoint meta) with this call's score.* options."""
  text = meta.get("config")
  if not text:
    return cli_config
  saved = ml_collections.ConfigDict(json.loads(text) if isinstance(text, str) else text)
  with saved.unlocked():
    saved.score = cli_config.score
  return saved


def _is_feature_file(path) -> bool:
  if not os.path.isfile(path) or not path.endswith(".npz"):
    return os.path.isfile(path) and not path.endswith(".npz")  # a pickle: only feature files
  try:
    with np.load(path, allow_pickle=False) as z:
      if "X" in z.files:
        return False
      return "feature_align" in z.files or ("features" in z.files and z["features"].ndim == 4)
  except Exception:  # pylint: disable=broad-except
    return False  # load_vectors reports it


def check_inputs(config, workdir):
  """(config to build, transform, X or FeatureMaps) after every check; ConfigError otherwise."""
  sc = config.score
  if not sc.input:
    raise ConfigError(
      "config.score.input: required with --mode=score (an .npz file holding X, (N, D), or a feature file)"
    )
  maps = _is_feature_file(sc.input)
  want = ".npz" if maps else ".npy"
  if not sc.output:
    raise ConfigError(f"config.score.output: required with --mode=score (the {want} file to write)")
  if not sc.output.endswith(want):
    what = "a feature-map input writes image scores and pixel maps" if maps else "vector input"
    raise ConfigError(f"config.score.output: {sc.output} must end with {want} ({what})")
  out_dir = os.path.dirname(os.path.abspath(sc.output))
  if not os.path.isdir(out_dir):
    raise ConfigError(f"config.score.output: the directory {out_dir} does not exist")
  if sc.batch_size < 1:
    raise ConfigError(f"config.score.batch_size must be >= 1, got {sc.batch_size}")
  if ckpt_lib.latest_step(workdir) is None:
    raise ConfigError(
      f"--workdir: no checkpoint under {os.path.join(workdir, 'checkpoints')} to score with (train first)"
    )
  meta = ckpt_lib.read_meta(workdir, modes.usable_checkpoint(None, workdir, move_aside=False))
  if "data_transform" not in meta:
    raise ConfigError(
      f"--workdir: the checkpoint in {workdir} was not trained on npz vector data "
      f"(config.data.name=npz), so it has no input transform to score with"
    )
  transform = anomaly_data.transform_from_json(meta["data_transform"])
  dim = int(meta.get("data_dim", 0) or transform.mean.shape[0])
  try:
    if maps:
      x = anomaly_data.load_feature_maps(sc.input)
      if x.features.shape[-1] != dim:
        raise ValueError(
          f"config.score.input: {sc.input} has C={x.features.shape[-1]} channels; the model was trained on D={dim}"
        )
    else:
      x = anomaly_data.load_vectors(sc.input, what="config.score.input", dim=dim)
  except ValueError as e:
    raise ConfigError(f"config.score.input: {e}" if not str(e).startswith("config.") else str(e)) from None
  return _saved_config(meta, config), transform, x


def run(config, workdir: str):
  """Scores config.score.input into config.score.output; returns the output path."""
  workdir = os.path.abspath(workdir)
  config, transform, x = check_inputs(config, workdir)
  maps = isinstance(x, anomaly_data.FeatureMaps)
  dim = x.features.shape[-1] if maps else x.shape[1]
  try:
    exp = experiment.assemble(
      config, None, (config.training.batch_size, dim), {"out_dim": dim} if config.policy.net.arch == "mlp" else {}
    )
  except ValueError as e:
    raise ConfigError(str(e)) from None
  problem = ckpt_lib.check_compatible(workdir, exp.abstract_state())
  if problem:
    raise ConfigError(f"--workdir: the checkpoint does not fit the network of its saved config ({problem})")
  repl = parallel.replicated(parallel.make_mesh())
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), exp.abstract_state())
  state, _ = ckpt_lib.restore_step(workdir, ckpt_lib.select(workdir).step, abstract)  # the newest that restores
  energy_fn = exp.energy_fn(parallel.to_host(state))
  if maps:
    image, pixel = map_scores(energy_fn, transform, x, config.score.batch_size)
    report = per_category_auroc(x, image, pixel)
    if jax.process_index() == 0:
      io.atomic_savez(
        config.score.output,
        image_score=image,
        pixel_map=pixel,
        label=x.label,
        clsname=x.clsname,
        auroc=np.asarray(json.dumps(report)),
      )
      print(f"wrote {image.shape[0]} image scores and {pixel.shape[1:]} pixel maps to {config.score.output}")
      for cls, r in report.items():
        print(f"  {cls:24s} " + "  ".join(f"{k} {v:.4f}" for k, v in r.items()), flush=True)
    return config.score.output
  scores = energies(energy_fn, transform(x), config.score.batch_size)
  if jax.process_index() == 0:
    io.atomic_write(config.score.output, lambda f: np.save(f, scores), ".npy")
    print(f"wrote {scores.shape[0]} scores to {config.score.output}", flush=True)
  return config.score.output


def per_category_auroc(maps: anomaly_data.FeatureMaps, image, pixel) -> dict:
  """{category: {"image_auroc", "pixel_auroc" (with masks)}} over the categories whose maps hold both
  normal and anomalous labels, and "mean" over them (the authors' unified-model report)."""
  from dxmi_jax.proj.anomaly import metrics  # pylint: disable=import-outside-toplevel

  out = {}
  for cls in sorted(set(maps.clsname.tolist())):
    idx = maps.clsname == cls
    if len(set(maps.label[idx].tolist())) < 2:
      continue
    r = {"image_auroc": metrics.auroc(maps.label[idx], image[idx])}
    if maps.mask is not None and maps.mask[idx].any():
      r["pixel_auroc"] = metrics.auroc(maps.mask[idx].reshape(-1), pixel[idx].reshape(-1))
    out[cls] = r
  if out:
    keys = set.intersection(*(set(r) for r in out.values()))
    out["mean"] = {k: float(np.mean([r[k] for r in out.values()])) for k in sorted(keys)}
  return out


def energy_maps(energy_fn, transform, maps: anomaly_data.FeatureMaps, batch_size: int = 4096) -> np.ndarray:
  """(N, H, W) energies, every location of every map scored as one vector."""
  n, h, w, c = maps.features.shape
  return energies(energy_fn, transform(maps.features.reshape(-1, c)), batch_size).reshape(n, h, w)


def map_scores(energy_fn, transform, maps: anomaly_data.FeatureMaps, batch_size: int = 4096):
  """(image scores (N,): the max of each energy map, pixel maps (N, h, w) upsampled bilinearly
  to the mask size, or the map's own size without masks)."""
  e = energy_maps(energy_fn, transform, maps, batch_size)
  size = e.shape[1:] if maps.mask is None else maps.mask.shape[1:]
  pixel = np.asarray(jax.image.resize(jnp.asarray(e), (e.shape[0],) + tuple(size), "bilinear"), np.float32)
  return e.reshape(e.shape[0], -1).max(1).astype(np.float32), pixel


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
