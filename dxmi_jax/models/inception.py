"""Inception-v3, FID variant (the pytorch-fid port of TF's 2015-12-05 graph), in Flax.

This is the feature extractor that DxMI's training-time FID uses
(``pytorch_fid.inception.InceptionV3([3])``, reference §2h / golden A5):

* bilinear resize to 299x299 with half-pixel centres (torch
  ``F.interpolate(..., align_corners=False)``, no antialiasing), then
  ``2x - 1`` (inputs are expected in [0, 1]);
* torchvision's Inception3 stem and blocks, with the FID patches: the pool
  branches of Mixed_5b/5c/5d (A), Mixed_6b..6e (C) and Mixed_7b (E_1) average
  over the *valid* positions only (``count_include_pad=False``, as in TF), and
  Mixed_7c (E_2) uses a 3x3 stride-1 **max** pool in its pool branch;
* every conv is ``BasicConv2d`` = conv (no bias) + BatchNorm (eps 1e-3, eval
  mode) + ReLU;
* outputs: ``pool3`` (N, 2048), the global average of Mixed_7c, and the 1008-way
  ``logits = pool3 @ W + b`` of ``fc``, plus ``logits_unbiased = pool3 @ W``.
  The Inception score of improved-GAN and OpenAI's evaluator is the softmax of
  ``pool3 @ W`` *without* the bias, so that is what the IS uses.

It is *not* OpenAI's TF evaluator (``classify_image_graph_def.pb``), which the
paper's 50k-sample numbers come from: the port matches it closely but not
exactly, so FIDs from the two differ slightly (reference §7.1).

Layout is NHWC.  Parameter names follow the torchvision state_dict
(``Mixed_5b/branch1x1/conv/kernel`` <-> ``Mixed_5b.branch1x1.conv.weight``), so
the converter is a mechanical rename + transpose.  BatchNorm statistics live in
the ``batch_stats`` collection: apply with
``InceptionV3().apply({"params": p, "batch_stats": s}, x)``.
"""

from __future__ import annotations

import collections
import functools
import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax.errors import CheckpointError
from dxmi_jax.torch_files import load_torch_state_dict

FID_WEIGHTS_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV_VAR = "DXMI_INCEPTION_WEIGHTS"
CONFIG_KEY = "config.eval.inception_weights"
# Where torch.hub puts the file when pytorch-fid downloaded it before; checked last.
TORCH_HUB_CACHE = pathlib.Path("~/.cache/torch/hub/checkpoints") / FID_WEIGHTS_FILENAME

RESIZE = 299
NUM_LOGITS = 1008
FEATURE_DIM = 2048
BN_EPS = 1e-3

# pytorch-fid's ``InceptionV3`` wrapper stores the same modules under other names.
_WRAPPER_PREFIXES = {
  "blocks.0.0": "Conv2d_1a_3x3",
  "blocks.0.1": "Conv2d_2a_3x3",
  "blocks.0.2": "Conv2d_2b_3x3",
  "blocks.1.0": "Conv2d_3b_1x1",
  "blocks.1.1": "Conv2d_4a_3x3",
  "blocks.2.0": "Mixed_5b",
  "blocks.2.1": "Mixed_5c",
  "blocks.2.2": "Mixed_5d",
  "blocks.2.3": "Mixed_6a",
  "blocks.2.4": "Mixed_6b",
  "blocks.2.5": "Mixed_6c",
  "blocks.2.6": "Mixed_6d",
  "blocks.2.7": "Mixed_6e",
  "blocks.3.0": "Mixed_7a",
  "blocks.3.1": "Mixed_7b",
  "blocks.3.2": "Mixed_7c",
}

Pad = Tuple[Tuple[int, int], Tuple[int, int]]


def _same(kh: int, kw: int) -> Pad:
  return ((kh // 2, kh // 2), (kw // 2, kw // 2))


class BasicConv2d(nn.Module):
  """conv (no bias) -> BatchNorm(eps=1e-3, running statistics) -> ReLU."""

  features: int
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Pad = ((0, 0), (0, 0))

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(
      self.features, self.kernel_size, strides=self.strides, padding=self.padding, use_bias=False, name="conv"
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_valid(x):
  """3x3 stride-1 average over the in-image positions (count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d (FIDInceptionA)."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv2d(64, (5, 5), padding=_same(5, 5), name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, (3, 3), padding=_same(3, 3), name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, (3, 3), padding=_same(3, 3), name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_valid(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction 35 -> 17)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, (3, 3), padding=_same(3, 3), name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (FIDInceptionC), factorised 7x7 convolutions."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=_same(1, 7), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=_same(7, 1), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=_same(7, 1), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=_same(1, 7), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=_same(7, 1), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=_same(1, 7), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_valid(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction 17 -> 8)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv2d(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=_same(1, 7), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=_same(7, 1), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1, valid-average pool) and Mixed_7c (E_2, max pool)."""

  pool: str  # "avg" (E_1) or "max" (E_2)

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        BasicConv2d(384, (1, 3), padding=_same(1, 3), name="branch3x3_2a")(b3),
        BasicConv2d(384, (3, 1), padding=_same(3, 1), name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, (3, 3), padding=_same(3, 3), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        BasicConv2d(384, (1, 3), padding=_same(1, 3), name="branch3x3dbl_3a")(bd),
        BasicConv2d(384, (3, 1), padding=_same(3, 1), name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    if self.pool == "avg":
      pooled = _avg_pool_valid(x)
    elif self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"InceptionE.pool must be 'avg' or 'max', got {self.pool!r}")
    bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Logits(nn.Module):
  """``fc`` (2048 -> 1008).  Returns (x @ W, x @ W + b)."""

  features: int = NUM_LOGITS

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    unbiased = x @ kernel
    return unbiased, unbiased + bias


def resize_bilinear_299(x: jax.Array) -> jax.Array:
  """NHWC -> (N, 299, 299, C), bilinear with half-pixel centres, no antialiasing.

  Equals torch ``F.interpolate(x, (299, 299), mode="bilinear",
  align_corners=False)`` (antialias=False) for up- and downsampling: the
  triangle kernel renormalised at the borders is torch's edge clamping.
  """
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, RESIZE, RESIZE, c), method="bilinear", antialias=False)


class InceptionV3(nn.Module):
  """pytorch-fid ``InceptionV3([3])`` with FID weights layout; NHWC, inputs in [0, 1].

  Returns a dict with ``pool3`` (N, 2048), ``logits`` and ``logits_unbiased``
  (N, 1008); with ``with_block_means=True`` also the spatial means of the
  outputs of pytorch-fid's blocks 0, 1, 2 (``block{i}_mean``), for debugging.
  """

  resize_input: bool = True
  normalize_input: bool = True

  @nn.compact
  def __call__(self, x, with_block_means: bool = False) -> Dict[str, jax.Array]:
    out = {}
    x = x.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear_299(x)
    if self.normalize_input:
      x = 2 * x - 1
    # block 0
    x = BasicConv2d(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=_same(3, 3), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3s2(x)
    if with_block_means:
      out["block0_mean"] = x.mean(axis=(1, 2))
    # block 1
    x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3s2(x)
    if with_block_means:
      out["block1_mean"] = x.mean(axis=(1, 2))
    # block 2
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    if with_block_means:
      out["block2_mean"] = x.mean(axis=(1, 2))
    # block 3
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool3 = x.mean(axis=(1, 2))
    out["pool3"] = pool3
    out["logits_unbiased"], out["logits"] = Logits(name="fc")(pool3)
    return out


# --------------------------------------------------------------------------------------
# Weights: torch state_dict (torchvision layout) -> Flax variables.
# --------------------------------------------------------------------------------------


def variable_shapes() -> Dict[str, Any]:
  """Shapes of {"params", "batch_stats"} (a fresh nested dict), via ``jax.eval_shape``."""
  return jax.tree.map(lambda s: s, _variable_shapes(), is_leaf=lambda s: isinstance(s, tuple))


@functools.lru_cache(maxsize=None)
def _variable_shapes() -> Dict[str, Any]:
  model = InceptionV3()
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, RESIZE, RESIZE, 3), jnp.float32)))
  return jax.tree.map(lambda s: tuple(s.shape), dict(shapes))


_LEAF_MAP = {  # torch leaf -> (collection, flax leaf, transform)
  "conv.weight": ("params", ("conv", "kernel"), lambda w: w.transpose(2, 3, 1, 0)),
  "bn.weight": ("params", ("bn", "scale"), None),
  "bn.bias": ("params", ("bn", "bias"), None),
  "bn.running_mean": ("batch_stats", ("bn", "mean"), None),
  "bn.running_var": ("batch_stats", ("bn", "var"), None),
}


def _canonical_key(key: str) -> str:
  for prefix in ("module.", "inception."):
    if key.startswith(prefix):
      key = key[len(prefix) :]
  for wrapper, name in _WRAPPER_PREFIXES.items():
    if key.startswith(wrapper + "."):
      return name + key[len(wrapper) :]
  return key


def torch_to_flax(state_dict: Mapping[str, Any], source: str = "state_dict") -> Dict[str, Any]:
  """Converts a pytorch-fid / torchvision Inception3 state_dict to Flax variables.

  Accepts the torchvision layout (``Mixed_5b.branch1x1.conv.weight``, as in
  ``pt_inception-2015-12-05-6726825d.pth``) and pytorch-fid's wrapper layout
  (``blocks.2.0.branch1x1.conv.weight``).  The load is strict: every parameter
  of the model must be present with its exact shape, and unknown keys are an
  error (``num_batches_tracked`` is ignored).  ``fc.*`` is required too,
  because the Inception score needs it.

  Raises:
    CheckpointError: missing/unexpected keys, wrong shapes, non-finite values.
  """
  flat_expected = _flat_variable_shapes()
  out: Dict[Tuple[str, ...], np.ndarray] = {}
  unexpected, bad_shape = [], []
  for raw_key, value in state_dict.items():
    key = _canonical_key(raw_key)
    if key.endswith("num_batches_tracked"):
      continue
    arr = np.asarray(value)
    if key == "fc.weight":
      target, arr = ("params", "fc", "kernel"), arr.T
    elif key == "fc.bias":
      target = ("params", "fc", "bias")
    else:
      parts = key.split(".")
      leaf = ".".join(parts[-2:])
      if leaf not in _LEAF_MAP or len(parts) < 3:
        unexpected.append(raw_key)
        continue
      col, flax_leaf, fn = _LEAF_MAP[leaf]
      target = (col,) + tuple(parts[:-2]) + flax_leaf
      if fn is not None:
        if arr.ndim != 4:
          bad_shape.append(f"{raw_key}: {arr.shape} (expected a 4-d OIHW conv weight)")
          continue
        arr = fn(arr)
    if target not in flat_expected:
      unexpected.append(raw_key)
      continue
    if tuple(arr.shape) != flat_expected[target]:
      bad_shape.append(
        f"{raw_key}: {tuple(np.asarray(value).shape)} does not fit {'/'.join(target)} {flat_expected[target]}"
      )
      continue
    if not np.issubdtype(arr.dtype, np.floating):
      bad_shape.append(f"{raw_key}: dtype {arr.dtype} is not floating point")
      continue
    if not np.all(np.isfinite(arr)):
      bad_shape.append(f"{raw_key}: contains NaN or inf")
      continue
    out[target] = np.ascontiguousarray(arr, dtype=np.float32)
  missing = sorted(".".join(k[1:]) for k in flat_expected if k not in out)
  if unexpected or bad_shape or missing:
    msg = [f"{source} is not a pytorch-fid FID-Inception state_dict (torchvision Inception3 layout, 1008 logits):"]
    if missing:
      msg.append(f"{len(missing)} missing parameters, e.g. {missing[:3]}")
    if unexpected:
      msg.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
    if bad_shape:
      msg.append(f"{len(bad_shape)} bad tensors, e.g. {bad_shape[:3]}")
    raise CheckpointError("; ".join(msg))
  return _nest(out)


def _flat_variable_shapes() -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """``variable_shapes`` flattened: {(collection, *path): shape}."""
  expected = variable_shapes()
  flat_expected = {}
  for col, tree in expected.items():
    for path, shape in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda s: isinstance(s, tuple))[0]:
      flat_expected[(col,) + tuple(p.key for p in path)] = shape
  return flat_expected


def _nest(flat: Mapping[Tuple[str, ...], Any]) -> Dict[str, Any]:
  """{(a, b, c): leaf} -> {a: {b: {c: leaf}}}, in the order of ``flat``."""
  variables: Dict[str, Any] = {}
  for path, arr in flat.items():
    node = variables
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = arr
  return variables


def _missing_weights_message(looked_at: Sequence[str]) -> str:
  where = "; ".join(looked_at) if looked_at else "no path was given"
  return (
    f"FID Inception weights not found ({where}). Download {FID_WEIGHTS_FILENAME} from "
    f"{FID_WEIGHTS_URL} and point to it with --inception_weights=PATH (CLI), "
    f"{CONFIG_KEY} (training config) or the {WEIGHTS_ENV_VAR} environment variable. "
    f"A .npz with the same torch-layout keys is accepted too (no torch needed)."
  )


def resolve_weights_path(path: Optional[str] = None, config: Any = None) -> str:
  """Finds the weights file: ``path``, then ``config.eval.inception_weights``,
  then ``$DXMI_INCEPTION_WEIGHTS``, then torch.hub's cache.

  Raises:
    CheckpointError with download instructions when none exists.
  """
  looked_at = []
  candidates = []
  if path:
    candidates.append((os.fspath(path), "given path"))
  cfg_path = _config_weights(config)
  if cfg_path:
    candidates.append((cfg_path, CONFIG_KEY))
  env = os.environ.get(WEIGHTS_ENV_VAR)
  if env:
    candidates.append((env, f"${WEIGHTS_ENV_VAR}"))
  if not candidates:
    candidates.append((str(TORCH_HUB_CACHE.expanduser()), "torch.hub cache"))
  for cand, origin in candidates:
    if os.path.isfile(cand):
      return cand
    looked_at.append(f"{origin} {cand} does not exist")
    if origin == "given path":  # an explicit path that is wrong is an error, no fallback
      break
  raise CheckpointError(_missing_weights_message(looked_at))


def _config_weights(config: Any) -> Optional[str]:
  if config is None:
    return None
  ev = config.get("eval") if isinstance(config, Mapping) else getattr(config, "eval", None)
  if ev is None:
    return None
  val = ev.get("inception_weights") if isinstance(ev, Mapping) else getattr(ev, "inception_weights", None)
  return os.fspath(val) if val else None


def load_variables(
  source: Union[str, os.PathLike, Mapping[str, Any], None] = None, config: Any = None
) -> Dict[str, Any]:
  """Flax variables of the FID Inception from a path or an in-memory state_dict.

  ``source`` may be a mapping {torch key: numpy array} (already loaded), a
  ``.pth``/``.pt`` file (read with :func:`dxmi_jax.torch_files.load_torch_state_dict`,
  needs torch), a ``.npz`` holding the torch-layout keys, or ``None`` to use
  ``config.eval.inception_weights`` / ``$DXMI_INCEPTION_WEIGHTS``.
  """
  if isinstance(source, Mapping):
    return torch_to_flax(source, source="the given state_dict")
  path = resolve_weights_path(source, config)
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as z:
        sd = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{path} is not a readable .npz: {e}") from e
  else:
    sd, _ = load_torch_state_dict(path)
  return torch_to_flax(sd, source=path)


def recipe_state_dict(keys_file: Union[str, os.PathLike]) -> "collections.OrderedDict[str, np.ndarray]":
  """Deterministic stand-in weights of golden README A5 (torch layout, numpy only).

  For tests and benchmarks: the real weights cannot be shipped.  Key ``i`` of
  the sorted key list draws from ``numpy.random.default_rng(1000 + i)``; the
  per-key rule (conv He-normal, BN around identity, running
  variance U(0.5, 1.5)), computed in float64 and stored as float32.
  """
  sd = collections.OrderedDict()
  with open(keys_file, encoding="utf-8") as f:
    for line in f:
      if not line.strip() or line.startswith("#"):
        continue
      idx, key, shape_s = line.rstrip("\n").split("\t")[:3]
      i = int(idx)
      shape = tuple(int(s) for s in shape_s.strip("()").split(",") if s.strip())
      if key.endswith("num_batches_tracked"):
        sd[key] = np.zeros((), np.int64)
        continue
      rng = np.random.default_rng(1000 + i)
      if key.endswith("conv.weight"):
        v = rng.standard_normal(shape) * np.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
      elif key.endswith("bn.weight"):
        v = 1 + 0.1 * rng.standard_normal(shape)
      elif key.endswith("bn.bias") or key.endswith("bn.running_mean"):
        v = 0.1 * rng.standard_normal(shape)
      elif key.endswith("bn.running_var"):
        v = rng.uniform(0.5, 1.5, size=shape)
      elif key == "fc.weight":
        v = rng.standard_normal(shape) / np.sqrt(shape[1])
      elif key == "fc.bias":
        v = 0.01 * rng.standard_normal(shape)
      else:
        raise ValueError(f"{keys_file}: no recipe rule for key {key!r}")
      sd[key] = v.astype(np.float32)
  return sd
