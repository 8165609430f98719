"""Hugging Face diffusers ``UNet2DModel`` folders <-> our DDPM UNet (``convert.from_diffusers`` etc.).

A diffusers folder holds ``config.json`` (the ``UNet2DModel`` constructor arguments) and
``diffusion_pytorch_model.safetensors`` (or ``.bin``), optionally ``scheduler_config.json``;
a pipeline folder (``model_index.json``) holds them under ``unet/`` and ``scheduler/``.

The ``UNet2DModel`` family is the official DDPM UNet (``dxmi_jax.models.ddpm_unet``) with
settings, each one a ``DDPMUNet`` field:

==========================  =============================================================
diffusers config            ``DDPMUNet`` field
==========================  =============================================================
block_out_channels          ch = block_out_channels[0]; ch_mult when every width is ch
                            times an integer, else level_channels
layers_per_block            num_res_blocks (the up path has one more, as in both codes)
Attn{Down,Up}Block2D        attn_resolutions: sample_size / 2^level of the attention levels
sample_size                 resolution
in_channels, out_channels   in_channels, out_ch
flip_sin_to_cos, freq_shift flip_sin_to_cos, freq_shift
norm_num_groups, norm_eps   norm_groups, norm_eps
downsample_padding          downsample_padding (0: right/bottom pad; 1: symmetric)
attention_head_dim          attn_head_channels (None: one head -> 0)
dropout                     dropout
==========================  =============================================================

Anything else must hold its only representable value (``resnet_time_scale_shift="default"``,
``act_fn="silu"``, ``time_embedding_type="positional"``, ``mid_block_scale_factor=1``, ...);
another value is a ``CheckpointError`` naming the field and the value.  Missing fields take
diffusers' own ``UNet2DModel`` defaults, as ``from_pretrained`` does.

Weights: the torch keys map by rule onto our Flax paths (``down_blocks.1.resnets.0.conv1`` <->
``down_1_block_0/conv1``, ``up_blocks.0`` <-> our last level ``up_{n-1}``, ``mid_block.resnets.0``
<-> ``mid_block_1``); the attention projections are ``Linear`` layers there and 1x1 convolutions
here.  The older attention names (``query``, ``key``, ``value``, ``proj_attn``, as in the
``google/ddpm-*`` folders) are read too.  Reading ``.safetensors`` needs the ``safetensors``
package only (no torch); ``.bin`` needs torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
from flax import traverse_util

from dxmi_jax import io
from dxmi_jax.errors import CheckpointError, mismatch_report
from dxmi_jax.models import registry

ARCH = "ddpm_unet"
WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"
SCHEDULER_CONFIG = "scheduler_config.json"
SAMPLER_JSON = "dxmi_sampler.json"
#: the diffusers release the exported folders were checked against (tests/test_diffusers_io.py)
DIFFUSERS_VERSION = "0.42.1"

#: ``UNet2DModel.__init__`` defaults (diffusers 0.42); a missing field takes these, as there.
UNET_DEFAULTS: Dict[str, Any] = {
  "sample_size": None,
  "in_channels": 3,
  "out_channels": 3,
  "center_input_sample": False,
  "time_embedding_type": "positional",
  "time_embedding_dim": None,
  "freq_shift": 0,
  "flip_sin_to_cos": True,
  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
  "mid_block_type": "UNetMidBlock2D",
  "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
  "block_out_channels": [224, 448, 672, 896],
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "downsample_padding": 1,
  "downsample_type": "conv",
  "upsample_type": "conv",
  "dropout": 0.0,
  "act_fn": "silu",
  "attention_head_dim": 8,
  "norm_num_groups": 32,
  "attn_norm_num_groups": None,
  "norm_eps": 1e-5,
  "resnet_time_scale_shift": "default",
  "add_attention": True,
  "class_embed_type": None,
  "num_class_embeds": None,
  "num_train_timesteps": None,
}
# fields that must hold one value (the network has no other)
_FIXED = {
  "center_input_sample": (False,),
  "time_embedding_type": ("positional",),
  "mid_block_type": ("UNetMidBlock2D",),
  "mid_block_scale_factor": (1,),
  "downsample_type": ("conv",),
  "upsample_type": ("conv",),
  "act_fn": ("silu", "swish"),
  "resnet_time_scale_shift": ("default",),
  "add_attention": (True,),
  "class_embed_type": (None,),
  "num_class_embeds": (None,),
}
_DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}
# DDPMUNet fields that only change how the network runs, not its weights
RUNTIME_FIELDS = ("dtype", "remat", "attention_chunk", "dropout")


# ----------------------------------------------------------------------------------------------
# Folders.
# ----------------------------------------------------------------------------------------------


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: not a readable JSON file: {e}") from None
  if not isinstance(out, dict):
    raise CheckpointError(f"{path}: expected a JSON object, got {type(out).__name__}")
  return out


def _is_unet_config(path: str) -> bool:
  try:
    cfg = _read_json(path)
  except CheckpointError:
    return False
  return cfg.get("_class_name") == "UNet2DModel" or (
    "_class_name" not in cfg and "block_out_channels" in cfg and "down_block_types" in cfg
  )


def unet_folder(path: str) -> Optional[str]:
  """The folder holding the UNet's config.json (``path`` itself or a pipeline's ``unet/``), or None."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    return None
  for cand in (path, os.path.join(path, "unet")):
    if os.path.isfile(os.path.join(cand, "config.json")) and _is_unet_config(os.path.join(cand, "config.json")):
      return cand
  return None


def is_diffusers_folder(path: str) -> bool:
  """Whether ``path`` is a diffusers ``UNet2DModel`` folder (or a pipeline folder with one)."""
  return bool(path) and unet_folder(path) is not None


def _require_folder(path: str) -> str:
  folder = unet_folder(path)
  if folder is None:
    raise CheckpointError(
      f"{path} is not a diffusers UNet2DModel folder: expected config.json with "
      f'"_class_name": "UNet2DModel" (there or in its unet/ subfolder)'
    )
  return folder


def _scheduler_config_path(path: str, folder: str) -> Optional[str]:
  for cand in (
    os.path.join(folder, SCHEDULER_CONFIG),
    os.path.join(path, SCHEDULER_CONFIG),
    os.path.join(path, "scheduler", SCHEDULER_CONFIG),
    os.path.join(os.path.dirname(os.path.abspath(folder)), "scheduler", SCHEDULER_CONFIG),
  ):
    if os.path.isfile(cand):
      return cand
  return None


# ----------------------------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------------------------


def _bad(source: str, field: str, value, expected: str) -> CheckpointError:
  return CheckpointError(f"{source}: {field}={value!r} cannot be represented by our DDPM UNet: expected {expected}")


def _int(source, field, v, lo=0) -> int:
  if isinstance(v, bool) or not isinstance(v, int) or v < lo:
    raise _bad(source, field, v, f"an integer >= {lo}")
  return v


def fields_from_unet_config(cfg: Mapping[str, Any], source: str = "config.json") -> Dict[str, Any]:
  """``DDPMUNet`` fields of a ``UNet2DModel`` config; ``CheckpointError`` naming a field we cannot represent."""
  c = _unet_config_with_defaults(cfg, source)
  widths, attn_levels = _unet_levels(c, source)
  size = _unet_sample_size(c, source, len(widths))
  ch = widths[0]
  ted = c["time_embedding_dim"]
  if ted is not None and ted != 4 * ch:
    raise _bad(source, "time_embedding_dim", ted, f"None or 4 * block_out_channels[0] = {4 * ch}")
  groups, head = _unet_groups_and_head(c, source, widths, attn_levels)
  pad = _unet_check_scalars(c, source, ch)
  integer = all(w % ch == 0 for w in widths)
  return dict(
    ch=ch,
    ch_mult=tuple(w // ch for w in widths) if integer else (),
    level_channels=() if integer else widths,
    num_res_blocks=_int(source, "layers_per_block", c["layers_per_block"], 1),
    attn_resolutions=tuple(size // 2**lev for lev, a in enumerate(attn_levels) if a),
    dropout=float(c["dropout"]),
    resamp_with_conv=True,
    resolution=size,
    in_channels=_int(source, "in_channels", c["in_channels"], 1),
    out_ch=_int(source, "out_channels", c["out_channels"], 1),
    norm_groups=groups,
    norm_eps=float(c["norm_eps"]),
    downsample_padding=int(pad),
    attn_head_channels=0 if head is None else head,
    flip_sin_to_cos=bool(c["flip_sin_to_cos"]),
    freq_shift=float(c["freq_shift"]),
  )


def _unet_config_with_defaults(cfg: Mapping[str, Any], source: str) -> Dict[str, Any]:
  """The config's public fields over ``UNET_DEFAULTS``; the class, unknown fields and ``_FIXED`` values checked."""
  cls = cfg.get("_class_name", "UNet2DModel")
  if cls != "UNet2DModel":
    raise _bad(source, "_class_name", cls, "'UNet2DModel'")
  unknown = sorted(k for k in cfg if not k.startswith("_") and k not in UNET_DEFAULTS)
  if unknown:
    raise _bad(source, unknown[0], cfg[unknown[0]], f"only the UNet2DModel fields {sorted(UNET_DEFAULTS)}")
  c = dict(UNET_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")})
  for key, allowed in _FIXED.items():
    if c[key] not in allowed:
      raise _bad(source, key, c[key], " or ".join(repr(a) for a in allowed))
  return c


def _unet_levels(c: Mapping[str, Any], source: str) -> Tuple[Tuple[int, ...], list]:
  """(the widths of the levels, whether each level attends): down and up block types must mirror each other."""
  widths = c["block_out_channels"]
  if not isinstance(widths, (list, tuple)) or not widths:
    raise _bad(source, "block_out_channels", widths, "a non-empty list of integers")
  widths = tuple(_int(source, "block_out_channels", w, 1) for w in widths)
  n = len(widths)
  down, up = list(c["down_block_types"]), list(c["up_block_types"])
  for key, types, known in (("down_block_types", down, _DOWN_TYPES), ("up_block_types", up, _UP_TYPES)):
    if len(types) != n:
      raise _bad(source, key, types, f"{n} block types, one per block_out_channels entry")
    for bt in types:
      if bt not in known:
        raise _bad(source, key, types, f"block types among {sorted(known)}")
  attn_levels = [_DOWN_TYPES[bt] for bt in down]
  if [_UP_TYPES[bt] for bt in reversed(up)] != attn_levels:
    raise _bad(
      source, "up_block_types", up, f"the mirror of down_block_types {down} (attention at the same resolutions)"
    )
  return widths, attn_levels


def _unet_sample_size(c: Mapping[str, Any], source: str, n: int) -> int:
  """The square image size, a multiple of 2^(n - 1) for ``n`` levels."""
  size = c["sample_size"]
  if isinstance(size, (list, tuple)):
    if len(size) != 2 or size[0] != size[1]:
      raise _bad(source, "sample_size", size, "one size or a square [size, size]")
    size = size[0]
  if size is None:
    raise _bad(source, "sample_size", None, "the image size (an integer); the folder must give it")
  size = _int(source, "sample_size", size, 1)
  if size % 2 ** (n - 1):
    raise _bad(source, "sample_size", size, f"a multiple of 2^{n - 1} ({n} levels)")
  return size


def _unet_groups_and_head(
  c: Mapping[str, Any], source: str, widths: Tuple[int, ...], attn_levels: list
) -> Tuple[int, Optional[int]]:
  """(GroupNorm groups, attention head width or None for one head over all channels)."""
  groups = _int(source, "norm_num_groups", c["norm_num_groups"], 1)
  if c["attn_norm_num_groups"] not in (None, groups):
    raise _bad(source, "attn_norm_num_groups", c["attn_norm_num_groups"], f"None or norm_num_groups={groups}")
  for w in widths:
    if w % groups:
      raise _bad(source, "norm_num_groups", groups, f"a divisor of every block_out_channels entry {list(widths)}")
  head = c["attention_head_dim"]
  if head is not None:
    head = _int(source, "attention_head_dim", head, 1)
    attended = sorted({w for w, a in zip(widths, attn_levels) if a} | {widths[-1]})
    bad = [w for w in attended if w % head]
    if bad:
      raise _bad(source, "attention_head_dim", head, f"None or a divisor of the attended widths {attended}")
    if attended == [head]:
      head = None  # one head over all channels either way
  return groups, head


def _unet_check_scalars(c: Mapping[str, Any], source: str, ch: int) -> int:
  """``downsample_padding`` (returned), then the numeric fields and ``flip_sin_to_cos`` checked."""
  pad = c["downsample_padding"]
  if pad not in (0, 1) or isinstance(pad, bool):
    raise _bad(source, "downsample_padding", pad, "0 (right/bottom pad) or 1")
  for key in ("freq_shift", "norm_eps", "dropout"):
    v = c[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      raise _bad(source, key, v, "a finite number")
  if c["freq_shift"] >= ch // 2:
    raise _bad(source, "freq_shift", c["freq_shift"], f"a number below half the embedding width ({ch // 2})")
  if not isinstance(c["flip_sin_to_cos"], bool):
    raise _bad(source, "flip_sin_to_cos", c["flip_sin_to_cos"], "true or false")
  return pad


def check_scheduler_config(cfg: Mapping[str, Any], source: str = SCHEDULER_CONFIG) -> None:
  """The schedule our samplers derive from: linear beta 1e-4..0.02 over 1000 steps, epsilon-prediction."""
  from dxmi_jax.policies import schedules  # pylint: disable=import-outside-toplevel

  want = {
    "num_train_timesteps": schedules.NUM_DIFFUSION_STEPS,
    "beta_start": schedules.BETA_START,
    "beta_end": schedules.BETA_END,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
  }
  for key, expected in want.items():
    v = cfg.get(key, expected)  # diffusers' defaults are these values
    same = (
      v == expected if not isinstance(expected, float) else isinstance(v, (int, float)) and abs(v - expected) < 1e-12
    )
    if not same:
      raise CheckpointError(
        f"{source}: {key}={v!r}, but our samplers derive from the DDPM schedule "
        f"linear beta {schedules.BETA_START}..{schedules.BETA_END} over {schedules.NUM_DIFFUSION_STEPS} steps "
        f"with epsilon-prediction ({key}={expected!r})"
      )


def read_fields(path: str) -> Dict[str, Any]:
  """``DDPMUNet`` fields of a diffusers folder (its scheduler config checked too); reads no weights."""
  folder = _require_folder(path)
  cfg_path = os.path.join(folder, "config.json")
  fields = fields_from_unet_config(_read_json(cfg_path), cfg_path)
  sched = _scheduler_config_path(os.fspath(path), folder)
  if sched is not None:
    check_scheduler_config(_read_json(sched), sched)
  return fields


# ----------------------------------------------------------------------------------------------
# Weights.
# ----------------------------------------------------------------------------------------------

_RES_LEAVES = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2"}
_RES_LEAVES["nin_shortcut"] = "conv_shortcut"
_ATTN_LEAVES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def diffusers_key(path: Tuple[str, ...], num_levels: int) -> Tuple[str, str]:
  """(diffusers key, layout) of one of our Flax param paths.

  layout: ``kernel`` (a conv (kH, kW, I, O) <-> (O, I, kH, kW) or a Dense (in, out) <-> (out, in)),
  ``linear1x1`` (our 1x1 attention conv <-> their Linear (out, in)) or ``plain``.
  """
  head, *mods, leaf = path
  m = re.match(r"^(down|up)_(\d+)_(block|attn|downsample|upsample)(?:_(\d+))?$", head)
  attn = False
  if head == "conv_in" or head == "conv_out":
    prefix = head
  elif head == "norm_out":
    prefix = "conv_norm_out"
  elif head.startswith("temb_dense_"):
    prefix = f"time_embedding.linear_{int(head[-1]) + 1}"
  elif head in ("mid_block_1", "mid_block_2"):
    prefix = f"mid_block.resnets.{int(head[-1]) - 1}"
  elif head == "mid_attn_1":
    prefix, attn = "mid_block.attentions.0", True
  elif m:
    side, lev, kind, j = m.groups()
    blk = int(lev) if side == "down" else num_levels - 1 - int(lev)
    stem = f"{side}_blocks.{blk}"
    if kind == "block":
      prefix = f"{stem}.resnets.{j}"
    elif kind == "attn":
      prefix, attn = f"{stem}.attentions.{j}", True
    else:
      prefix = f"{stem}.{kind}rs.0"
  else:
    raise CheckpointError(f"no diffusers name for our parameter {'/'.join(path)}")
  if attn:
    mods = [_ATTN_LEAVES[mods[0]]] + mods[1:]
  elif prefix.split(".")[-2:-1] == ["resnets"]:
    mods = [_RES_LEAVES[mods[0]]] + mods[1:]
  key = ".".join([prefix] + mods + [_LEAF[leaf]])
  return key, "plain" if leaf != "kernel" else "linear1x1" if attn else "kernel"


def _to_ours(layout: str, v: np.ndarray) -> np.ndarray:
  if layout == "kernel":
    return v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T
  if layout == "linear1x1":
    return v.reshape(v.shape[0], v.shape[1]).T[None, None]
  return v


def _to_theirs(layout: str, v: np.ndarray) -> np.ndarray:
  if layout == "kernel":
    return v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
  if layout == "linear1x1":
    return v[0, 0].T
  return v


def _their_shape(layout: str, shape) -> Tuple[int, ...]:
  return tuple(int(d) for d in _to_theirs(layout, np.empty(shape, np.bool_)).shape)


def _rename_old_attention(sd: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """``...attentions.0.query.weight`` -> ``...attentions.0.to_q.weight`` (the older diffusers names)."""
  out = {}
  for k, v in sd.items():
    parts = k.split(".")
    if len(parts) >= 4 and parts[-4] == "attentions" and parts[-2] in _OLD_ATTN:
      k = ".".join(parts[:-2] + [_OLD_ATTN[parts[-2]], parts[-1]])
    out[k] = v
  return out


def _load_bfloat16_safetensors(path: str) -> Dict[str, np.ndarray]:
  """A .safetensors file with bfloat16 tensors (which numpy cannot name) -> float32 arrays.

  The format: an 8-byte little-endian header size, a JSON header {name: {dtype, shape,
  data_offsets}} and the raw little-endian tensor bytes; bfloat16 comes from ml_dtypes (jax's).
  """
  import ml_dtypes  # pylint: disable=import-outside-toplevel

  dtypes = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64, "I64": np.int64}
  try:
    with open(path, "rb") as f:
      n = int.from_bytes(f.read(8), "little")
      header = json.loads(f.read(n))
      data = f.read()
    out = {}
    for name, info in header.items():
      if name == "__metadata__":
        continue
      if info["dtype"] not in dtypes:
        raise ValueError(f"tensor {name} has dtype {info['dtype']}; expected one of {sorted(dtypes)}")
      a, b = info["data_offsets"]
      v = np.frombuffer(data[a:b], dtype=np.dtype(dtypes[info["dtype"]]).newbyteorder("<")).reshape(info["shape"])
      out[name] = v.astype(np.float32) if info["dtype"] != "I64" else v
  except (OSError, ValueError, KeyError) as e:
    raise CheckpointError(f"{path} is not a readable safetensors file: {type(e).__name__}: {e}") from e
  return out


def read_weights(path: str) -> Tuple[Dict[str, np.ndarray], str]:
  """(diffusers state_dict as float32 numpy, the file read) of a folder."""
  folder = _require_folder(path)
  st, bin_ = os.path.join(folder, WEIGHTS_SAFETENSORS), os.path.join(folder, WEIGHTS_BIN)
  if os.path.isfile(st):
    try:
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise CheckpointError(
        f"{st}: reading .safetensors needs the safetensors package (pip install safetensors)"
      ) from e
    try:
      sd = load_file(st)
    except TypeError:  # numpy has no bfloat16: read the file's tensors ourselves
      sd = _load_bfloat16_safetensors(st)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types (truncated file, bad header, ...)
      raise CheckpointError(f"{st} is not a readable safetensors file: {type(e).__name__}: {e}") from e
    src = st
  elif os.path.isfile(bin_):
    from dxmi_jax.torch_files import load_torch_state_dict  # pylint: disable=import-outside-toplevel

    sd, _ = load_torch_state_dict(bin_)
    src = bin_
  else:
    raise CheckpointError(f"{folder}: no weights: expected {WEIGHTS_SAFETENSORS} or {WEIGHTS_BIN}")
  out = {}
  for k, v in sd.items():
    v = np.asarray(v)
    out[k] = v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
  return _rename_old_attention(out), src


def state_dict_to_params(sd: Mapping[str, np.ndarray], cfg, source: str = "state_dict") -> dict:
  """diffusers state_dict -> our Flax params for ``cfg`` (a ddpm_unet config); strict."""
  cfg = registry.resolve_config(ARCH, cfg)
  nlev = len(cfg.level_channels or cfg.ch_mult)
  shapes = traverse_util.flatten_dict(registry.param_shapes(ARCH, cfg))
  expected = {}
  for p, s in shapes.items():
    key, layout = diffusers_key(p, nlev)
    expected[key] = (p, layout, _their_shape(layout, s.shape))
  missing = [k for k in expected if k not in sd]
  unexpected = [k for k in sd if k not in expected]
  misshaped = []
  for k, (_, layout, shp) in expected.items():
    if k in sd:
      got = tuple(np.shape(sd[k]))
      if layout == "linear1x1" and len(got) == 4 and got[2:] == (1, 1):
        got = got[:2]
      if got != shp:
        misshaped.append((k, tuple(np.shape(sd[k])), shp))
  if missing or unexpected or misshaped:
    raise CheckpointError(
      mismatch_report(
        f"{source} does not fit our DDPM UNet with config {registry.config_to_json_dict(cfg)}:",
        missing,
        unexpected,
        misshaped,
      )
    )
  flat = {p: np.asarray(_to_ours(layout, np.asarray(sd[k])), np.float32) for k, (p, layout, _) in expected.items()}
  return traverse_util.unflatten_dict(flat)


def params_to_state_dict(params, cfg) -> Dict[str, np.ndarray]:
  """Our Flax params -> diffusers state_dict (float32, contiguous), ordered as the Flax tree."""
  cfg = registry.resolve_config(ARCH, cfg)
  nlev = len(cfg.level_channels or cfg.ch_mult)
  out = {}
  for p, v in traverse_util.flatten_dict(dict(params)).items():
    key, layout = diffusers_key(p, nlev)
    out[key] = np.ascontiguousarray(_to_theirs(layout, np.asarray(v, np.float32)))
  return out


# ----------------------------------------------------------------------------------------------
# Import / export.
# ----------------------------------------------------------------------------------------------


def load(path: str, **overrides):
  """(model, params, fields) of a diffusers folder; ``overrides`` may set the runtime fields."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
  if bad:
    raise ValueError(
      f"from_diffusers: the architecture comes from the folder; only {RUNTIME_FIELDS} may be set, got {bad}"
    )
  fields = dict(read_fields(path), **overrides)
  cfg = registry.resolve_config(ARCH, fields)
  sd, src = read_weights(path)
  params = state_dict_to_params(sd, cfg, source=src)
  return registry.build(ARCH, cfg), jax.tree.map(jnp.asarray, params), fields


def model_fields(model) -> Dict[str, Any]:
  """The config fields of a ``DDPMUNet`` instance (the model half of a (model, params) pair)."""
  from dxmi_jax.models.ddpm_unet import DDPMUNet  # pylint: disable=import-outside-toplevel

  if not isinstance(model, DDPMUNet):
    raise CheckpointError(f"to_diffusers exports our DDPM UNet (ddpm_unet), got {type(model).__name__}")
  names = set(registry.default_config(ARCH).keys())
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name in names}


def unet_config(fields: Mapping[str, Any]) -> Dict[str, Any]:
  """The ``UNet2DModel`` config.json of our DDPM UNet fields; CheckpointError if diffusers has no equivalent."""
  cfg = registry.resolve_config(ARCH, dict(fields))
  from dxmi_jax.models.ddpm_unet import DDPMUNet  # pylint: disable=import-outside-toplevel

  try:
    widths = DDPMUNet(ch=cfg.ch, ch_mult=cfg.ch_mult, level_channels=cfg.level_channels).widths()
  except ValueError as e:
    raise CheckpointError(str(e)) from None
  where = "to_diffusers"
  if not cfg.resamp_with_conv:
    raise CheckpointError(
      f"{where}: resamp_with_conv=False has no UNet2DModel equivalent (it always resamples by conv)"
    )
  if cfg.ch != widths[0]:
    raise CheckpointError(
      f"{where}: ch={cfg.ch} differs from the first level's width {widths[0]}; UNet2DModel's input conv "
      f"outputs block_out_channels[0]"
    )
  attn = [cfg.resolution // 2**lev in cfg.attn_resolutions for lev in range(len(widths))]
  freq = float(cfg.freq_shift)
  return {
    "_class_name": "UNet2DModel",
    "_diffusers_version": DIFFUSERS_VERSION,
    "sample_size": int(cfg.resolution),
    "in_channels": int(cfg.in_channels),
    "out_channels": int(cfg.out_ch),
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "freq_shift": int(freq) if freq.is_integer() else freq,
    "flip_sin_to_cos": bool(cfg.flip_sin_to_cos),
    "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
    "block_out_channels": list(widths),
    "layers_per_block": int(cfg.num_res_blocks),
    "mid_block_scale_factor": 1,
    "downsample_padding": int(cfg.downsample_padding),
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": float(cfg.dropout),
    "act_fn": "silu",
    "attention_head_dim": int(cfg.attn_head_channels) or None,
    "norm_num_groups": int(cfg.norm_groups),
    "attn_norm_num_groups": None,
    "norm_eps": float(cfg.norm_eps),
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
  }


def scheduler_config() -> Dict[str, Any]:
  """A ``DDPMScheduler`` config of the base schedule the exported network was trained for."""
  from dxmi_jax.policies import schedules  # pylint: disable=import-outside-toplevel

  return {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "num_train_timesteps": schedules.NUM_DIFFUSION_STEPS,
    "beta_start": schedules.BETA_START,
    "beta_end": schedules.BETA_END,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
    "clip_sample": True,
  }


def sampler_spec(policy, policy_params) -> Dict[str, Any]:
  """The learned T-step sampler as plain numbers (``dxmi_sampler.json``, docs/checkpoints.md).

  Step t = 0..T-1 (t = 0 starts from x_0 ~ N(0, prior_std^2 I)):
  x_{t+1} = x_coef[t] x_t + eps_coef[t] unet(x_t, timesteps[t]) + sigma[t] z_t, z_t ~ N(0, I).
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from dxmi_jax.policies import sigma_from_log  # pylint: disable=import-outside-toplevel
  from dxmi_jax.policies.var import DDPMAncestralPolicy, VARPolicy  # pylint: disable=import-outside-toplevel

  T = int(policy.num_steps)
  t = jnp.arange(T, dtype=jnp.int32)
  if isinstance(policy, VARPolicy):
    # the policy's own tables (VARPolicy.mean_and_sigma reads the same ones)
    x_coef, eps_coef = policy._x_mult, policy._eps_mult  # pylint: disable=protected-access
    sigma = sigma_from_log(policy_params, t, policy.trainable_log_sigma_mask, policy._fixed_sigma)  # pylint: disable=protected-access
    kind = policy.sampler
  elif isinstance(policy, DDPMAncestralPolicy):
    s = policy.schedule
    x_coef, eps_coef, sigma, kind = s.x_mult, s.eps_mult, s.sigma, "ddpm"
  else:
    raise CheckpointError(
      f"the exported sampler must be a DDPM epsilon sampler (policy kinds var, ddim, ddpm), got {policy!r}"
    )
  floats = lambda a: [float(v) for v in np.asarray(a, np.float32).reshape(-1)]  # noqa: E731
  return {
    "format": "dxmi-sampler/1",
    "description": (
      "DxMI T-step sampler around the epsilon-prediction UNet of this folder. x_0 ~ N(0, prior_std^2 I); "
      "for t = 0..num_steps-1: x_{t+1} = x_coef[t] * x_t + eps_coef[t] * unet(x_t, timesteps[t]) "
      "+ sigma[t] * z_t with z_t ~ N(0, I); x_T is the sample, in the data scale the network was "
      "trained on ([-1, 1] for images). timesteps are the continuous network times (not integers)."
    ),
    "sampler": kind,
    "num_steps": T,
    "prior_std": float(policy.prior_std),
    "timesteps": floats(policy.net_time(t)),
    "x_coef": floats(x_coef),
    "eps_coef": floats(eps_coef),
    "sigma": floats(sigma),
  }


def _write_json(path: str, obj) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")


def save(model, params, out_dir: str, policy=None, policy_params=None, overwrite: bool = False) -> str:
  """Writes a ``UNet2DModel`` folder (config.json, safetensors, scheduler_config.json) of
  (model, params), plus ``dxmi_sampler.json`` when ``policy`` (and its params) are given.

  The folder appears only when complete (written beside it, then renamed).
  """
  try:
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError("to_diffusers needs the safetensors package (pip install safetensors)") from e
  fields = model_fields(model)
  config = unet_config(fields)
  sd = params_to_state_dict(params, fields)
  state_dict_to_params(sd, fields, source="params")  # strict: the params fit the model
  spec = None
  if policy is not None:
    if policy_params is None:
      raise ValueError("to_diffusers: policy_params (with log_sigma) are needed to export the sampler")
    spec = sampler_spec(policy, policy_params)
  out_dir = os.path.abspath(os.fspath(out_dir))
  with io.atomic_dir(out_dir, overwrite) as tmp:
    save_file(sd, os.path.join(tmp, WEIGHTS_SAFETENSORS), metadata={"format": "pt"})
    _write_json(os.path.join(tmp, "config.json"), config)
    _write_json(os.path.join(tmp, SCHEDULER_CONFIG), scheduler_config())
    if spec is not None:
      _write_json(os.path.join(tmp, SAMPLER_JSON), spec)
  return out_dir
