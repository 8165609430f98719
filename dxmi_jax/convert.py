"""PyTorch state_dict <-> Flax params for the official DxMI networks, and Orbax export.

Public API (architectures: "ddpm_unet", "adm_unet", "igebm", "ddgan_ncsnpp"; keyword overrides
select the architecture's config, see ``dxmi_jax.models.registry``)::

  model, params = from_torch(path, arch, **overrides)
  model, params, extras = from_torch_with_extras(path, arch, **overrides)
  to_torch(params, arch, path, extras=None, **overrides)
  model, params, extras = load_pretrained(path_or_dir, arch, **overrides)
  save_pretrained(out_dir, arch, params, extras=None, overwrite=False, **overrides)  # Orbax
  python -m dxmi_jax.convert --arch=adm_unet --in=x.pt --out=DIR [--override key=value ...]
  python -m dxmi_jax.convert --yaml=configs/imagenet64/T10.yaml --in=x.pt --out=DIR   # official YAML

  # Hugging Face diffusers UNet2DModel folders (dxmi_jax.diffusers_io; docs/checkpoints.md)
  model, params = from_diffusers(folder)            # config.json + .safetensors (no torch) / .bin
  to_diffusers(model, params, out_dir, policy=None, policy_params=None)   # + dxmi_sampler.json
  python -m dxmi_jax.convert --diffusers=FOLDER --out=DIR
  python -m dxmi_jax.convert --to_diffusers --workdir=RUN --out=DIR   # a trained run's policy

Overrides and ``--yaml`` accept the official config names (``num_channels``,
``class_cond``, ``attention_resolutions="32,16,8"``, ``channel_mult=""``) besides
ours; see ``dxmi_jax.models.official_names``.

An Orbax directory holds ``state/`` ({"params", "extras"}) and ``dxmi_network.json``
({"arch", "config", "extras"}); training configs point at the directory and
read it with ``load_pretrained``.

``params`` is the Flax param tree (``model.apply({"params": params}, x_nhwc, t, y)``
reproduces the official forward).  Tensors that DxMI's samplers register on the
network but that its forward never reads (``log_betas``, the trainable log noise
std, and VAR's ``std`` buffer) are *extras*: ``from_torch`` drops them so that
``model, params = from_torch(...)`` stays a plain pair, and
``from_torch_with_extras`` / ``load_pretrained`` return them as a third value,
a dict {name: float32 array} (empty for a pretrained backbone).

Key mapping.  Flax submodule names mirror the torch module paths (the ADM
``input_blocks_3_1/qkv`` is ``input_blocks.3.1.qkv``), so a small per-arch rename
table maps every Flax leaf to one torch key; conv kernels are transposed
(O, I, kH, kW) <-> (kH, kW, I, O), Linear weights (out, in) <-> (in, out), and
GroupNorm ``weight``/``bias``, Embedding ``weight`` map to ``scale``/``bias``,
``embedding``.  Accepted wrappers: bare state_dicts, ``{"state_dict"|"model"|"ema"|"net": ...}``
(``load_torch_state_dict``), leading ``module.`` (DDP) and ``net.``
(``TimeIndependentValue``) prefixes; float16 tensors (DxMI's fp16 torso) are
upcast exactly.  Loading is strict: any missing, unexpected or mis-shaped key
raises ``CheckpointError`` listing them with both shapes.

Torch is optional (extra ``[convert]``): it is imported lazily, and only the
functions that read or write ``.pt``/``.pth`` files need it.
"""

from __future__ import annotations

import argparse
import ast
import collections
import functools
import json
import os
import re
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dxmi_jax import diffusers_io, io
from dxmi_jax.errors import CheckpointError, mismatch_report
from dxmi_jax.models import official_names, registry
from dxmi_jax.torch_files import _import_torch, load_torch_state_dict


# ----------------------------------------------------------------------------------------------
# Key mapping (torch-free).
# ----------------------------------------------------------------------------------------------

# Tensors the samplers register on the network that its forward does not use.
_EXTRA_KEYS = {
  "ddpm_unet": ("log_betas", "std"),
  "adm_unet": ("log_betas",),
  "igebm": (),
  "ddgan_ncsnpp": ("log_betas",),
}
# Prefix the official code adds to the saved keys (TimeIndependentValue.net; DDGAN saves its
# DDP-wrapped generator, so netG_*.pth keys start with "module.").
_SAVE_PREFIX = {"ddpm_unet": "", "adm_unet": "", "igebm": "net.", "ddgan_ncsnpp": "module."}
# Archs whose files are a bare state_dict (DDGAN's netG_*.pth, which its test_ddgan.py reads
# by stripping the first 7 characters of every key); the others get {"state_dict": ...}.
_BARE_FILE = ("ddgan_ncsnpp",)
_STRIP_PREFIXES = ("module.", "net.")
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_DIGITS = (re.compile(r"_(\d+)"), r".\1")  # input_blocks_3_1 -> input_blocks.3.1
# DDGAN: only the list indices are dotted (all_modules_7/Conv_0 -> all_modules.7.Conv_0), and
# its NIN layers keep their own parameter names W (already (in, out)) and b.
_DDGAN_LIST = (re.compile(r"^(all_modules|z_transform)_(\d+)$"), r"\1.\2")
_DDGAN_LEAF = dict(_LEAF, W="W", b="b")
_DDPM_RULES = (
  (re.compile(r"^temb_dense_(\d+)$"), r"temb.dense.\1"),
  (re.compile(r"^(down|up)_(\d+)_(block|attn)_(\d+)$"), r"\1.\2.\3.\4"),
  (re.compile(r"^(down|up)_(\d+)_(downsample|upsample)$"), r"\1.\2.\3"),
  (re.compile(r"^mid_(\w+)$"), r"mid.\1"),
)


def _arch_check(arch: str) -> None:
  if arch not in _EXTRA_KEYS:
    raise ValueError(f"convert: unknown arch {arch!r}; expected one of {sorted(_EXTRA_KEYS)}")


def torch_key(arch: str, flax_path: Sequence[str]) -> str:
  """The official state_dict key (without save prefix) of one Flax param path."""
  *mods, leaf = flax_path
  if arch == "ddpm_unet":
    head = mods[0]
    for pat, rep in _DDPM_RULES:
      if pat.match(head):
        head = pat.sub(rep, head)
        break
    mods = [head] + list(mods[1:])
  elif arch == "ddgan_ncsnpp":
    mods = [_DDGAN_LIST[0].sub(_DDGAN_LIST[1], mods[0])] + list(mods[1:])
    return ".".join(mods + [_DDGAN_LEAF[leaf]])
  else:
    mods = [_DIGITS[0].sub(_DIGITS[1], m) for m in mods]
  return ".".join(mods + [_LEAF[leaf]])


def _to_flax(leaf: str, v: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    return v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T
  return v


def _to_torch(leaf: str, v: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    return v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
  return v


def _flax_shape_to_torch(leaf: str, shape) -> Tuple[int, ...]:
  shape = tuple(int(d) for d in shape)
  if leaf == "kernel":
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
  return shape


def _expected(arch: str, cfg) -> Mapping[str, Tuple[Tuple[str, ...], Tuple[int, ...]]]:
  """{torch key: (flax path, torch-layout shape)} of ``arch`` under ``cfg`` (ordered)."""
  return _expected_cached(arch, json.dumps(registry.config_to_json_dict(cfg), sort_keys=True))


@functools.lru_cache(maxsize=32)
def _expected_cached(arch: str, cfg_json: str):
  shapes = traverse_util.flatten_dict(registry.param_shapes(arch, json.loads(cfg_json)))
  out = collections.OrderedDict()
  for path, sds in shapes.items():
    out[torch_key(arch, path)] = (path, _flax_shape_to_torch(path[-1], sds.shape))
  return out


def expected_state_dict_shapes(arch: str, cfg=None) -> Dict[str, Tuple[int, ...]]:
  """{saved torch key: torch-layout shape} of the network weights (no extras); cheap."""
  _arch_check(arch)
  pre = _SAVE_PREFIX[arch]
  expected = _expected(arch, registry.resolve_config(arch, cfg))
  return {pre + k: shp for k, (_, shp) in expected.items()}


def _strip_prefixes(sd: Mapping[str, Any]) -> Dict[str, Any]:
  """Removes ``module.`` / ``net.`` while every key carries it."""
  sd = dict(sd)
  changed = True
  while changed and sd:
    changed = False
    for pre in _STRIP_PREFIXES:
      if all(k.startswith(pre) for k in sd):
        sd = {k[len(pre) :]: v for k, v in sd.items()}
        changed = True
  return sd


def state_dict_to_params(
  sd: Mapping[str, np.ndarray], arch: str, cfg=None, *, source: str = "state_dict"
) -> Tuple[dict, Dict[str, np.ndarray]]:
  """Official-layout state_dict (numpy) -> (Flax params, extras); strict.

  ``cfg`` is a config mapping for ``arch`` (missing keys take the defaults).
  """
  _arch_check(arch)
  cfg = registry.resolve_config(arch, cfg)
  sd = _strip_prefixes(sd)
  expected = _expected(arch, cfg)
  extras = {k: np.asarray(sd[k], np.float32) for k in _EXTRA_KEYS[arch] if k in sd}
  missing = [k for k in expected if k not in sd]
  unexpected = [k for k in sd if k not in expected and k not in extras]
  misshaped = [
    (k, tuple(np.shape(sd[k])), shp) for k, (_, shp) in expected.items() if k in sd and tuple(np.shape(sd[k])) != shp
  ]
  if missing or unexpected or misshaped:
    raise CheckpointError(
      mismatch_report(
        f"{source} does not fit arch {arch!r} with config "
        f"{registry.config_to_json_dict(cfg)} (pass the architecture as overrides):",
        missing,
        unexpected,
        misshaped,
      )
    )
  flat = {path: np.asarray(_to_flax(path[-1], np.asarray(sd[k])), np.float32) for k, (path, _) in expected.items()}
  return traverse_util.unflatten_dict(flat), extras


def params_to_state_dict(
  params, arch: str, cfg=None, extras: Optional[Mapping] = None
) -> "collections.OrderedDict[str, np.ndarray]":
  """Flax params (+ extras) -> official-layout float32 numpy state_dict (with the save prefix)."""
  _arch_check(arch)
  cfg = registry.resolve_config(arch, cfg)
  expected = _expected(arch, cfg)
  flat = traverse_util.flatten_dict(dict(params))
  by_key = {torch_key(arch, p): (p, v) for p, v in flat.items()}
  missing = [k for k in expected if k not in by_key]
  unexpected = [k for k in by_key if k not in expected]
  misshaped = [
    (k, _flax_shape_to_torch(p[-1], np.shape(v)), expected[k][1])
    for k, (p, v) in by_key.items()
    if k in expected and _flax_shape_to_torch(p[-1], np.shape(v)) != expected[k][1]
  ]
  if missing or unexpected or misshaped:
    pre = _SAVE_PREFIX[arch]
    raise CheckpointError(
      mismatch_report(
        f"params do not fit arch {arch!r} with config {registry.config_to_json_dict(cfg)}:",
        [pre + k for k in missing],
        [pre + k for k in unexpected],
        [(pre + k, a, b) for k, a, b in misshaped],
        side="params",
      )
    )
  extras = dict(extras or {})
  bad = sorted(set(extras) - set(_EXTRA_KEYS[arch]))
  if bad:
    raise CheckpointError(f"extras {bad} are not saved with arch {arch!r} (allowed: {list(_EXTRA_KEYS[arch])})")
  pre = _SAVE_PREFIX[arch]
  out = collections.OrderedDict()
  for k in _EXTRA_KEYS[arch]:
    if k in extras:
      out[pre + k] = np.asarray(extras[k], np.float32)
  for k in expected:
    p, v = by_key[k]
    out[pre + k] = np.ascontiguousarray(_to_torch(p[-1], np.asarray(v, np.float32)))
  return out


# ----------------------------------------------------------------------------------------------
# Files.
# ----------------------------------------------------------------------------------------------


def from_torch_with_extras(path: str, arch: str, **overrides):
  """Reads an official .pt/.pth checkpoint -> (model, params, extras)."""
  _arch_check(arch)
  cfg = registry.resolve_config(arch, **overrides)
  sd, _ = load_torch_state_dict(path)
  params, extras = state_dict_to_params(sd, arch, cfg, source=f"checkpoint {os.fspath(path)}")
  params = jax.tree.map(jnp.asarray, params)
  extras = {k: jnp.asarray(v) for k, v in extras.items()}
  return registry.build(arch, cfg), params, extras


def from_torch(path: str, arch: str, **overrides):
  """Reads an official .pt/.pth checkpoint -> (model, params); see ``from_torch_with_extras``."""
  model, params, _ = from_torch_with_extras(path, arch, **overrides)
  return model, params


def to_torch(params, arch: str, path: str, extras: Optional[Mapping] = None, **overrides) -> None:
  """Writes ``{"state_dict": <official keys, float32>}`` (what the official loaders read).

  The file is written to a temporary name first and renamed, so a failure
  leaves nothing behind.
  """
  torch = _import_torch()
  sd = params_to_state_dict(params, arch, overrides, extras)
  sd = collections.OrderedDict((k, torch.from_numpy(v.copy())) for k, v in sd.items())
  io.atomic_write(path, lambda f: torch.save(sd if arch in _BARE_FILE else {"state_dict": sd}, f), ".pt")


_META = "dxmi_network.json"
_STATE = "state"


def save_pretrained(
  out_dir: str, arch: str, params, extras: Optional[Mapping] = None, overwrite: bool = False, **overrides
) -> str:
  """Writes an Orbax checkpoint {params, extras} plus ``dxmi_network.json`` (arch, config).

  The directory appears only when complete (written beside it, then renamed).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  cfg = registry.resolve_config(arch, **overrides)
  params_to_state_dict(params, arch, cfg, extras)  # validates structure and shapes
  out_dir = os.path.abspath(os.fspath(out_dir))
  with io.atomic_dir(out_dir, overwrite) as tmp:
    extras = {k: np.asarray(v, np.float32) for k, v in (extras or {}).items()}
    tree = {"params": jax.tree.map(np.asarray, params)}
    if extras:
      tree["extras"] = extras
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, _STATE), tree)
    ckptr.wait_until_finished()
    meta = {
      "arch": arch,
      "config": registry.config_to_json_dict(cfg),
      "extras": {k: list(v.shape) for k, v in extras.items()},
      "format": 1,
    }
    with open(os.path.join(tmp, _META), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2)
  return out_dir


def load_pretrained(path: str, arch: Optional[str] = None, **overrides):
  """(model, params, extras) from a .pt/.pth file or a directory written by ``save_pretrained``.

  For a directory the stored arch/config are used (``arch``, if given, must
  match; ``overrides`` may change non-structural fields such as ``dtype`` or
  ``dropout``).
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    if arch is None:
      raise ValueError(f"load_pretrained({path!r}): arch is required for a torch checkpoint")
    return from_torch_with_extras(path, arch, **overrides)
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  meta_path = os.path.join(path, _META)
  if not os.path.isfile(meta_path):
    raise CheckpointError(f"{path} is not a converted network checkpoint: {_META} is missing")
  with open(meta_path, encoding="utf-8") as f:
    meta = json.load(f)
  if arch is not None and arch != meta["arch"]:
    raise CheckpointError(f"{path} holds arch {meta['arch']!r}, not {arch!r}")
  arch = meta["arch"]
  cfg = registry.resolve_config(arch, meta["config"], **overrides)
  target = {"params": registry.param_shapes(arch, cfg)}
  if meta.get("extras"):
    target["extras"] = {k: jax.ShapeDtypeStruct(tuple(s), jnp.float32) for k, s in meta["extras"].items()}
  try:
    tree = ocp.StandardCheckpointer().restore(os.path.join(path, _STATE), target)
  except Exception as e:  # orbax raises several types for structure/shape mismatches
    raise CheckpointError(
      f"{path}: stored params do not fit arch {arch!r} with config "
      f"{registry.config_to_json_dict(cfg)}: {type(e).__name__}: {e}"
    ) from e
  return (
    registry.build(arch, cfg),
    jax.tree.map(jnp.asarray, tree["params"]),
    {k: jnp.asarray(v) for k, v in tree.get("extras", {}).items()},
  )


# ----------------------------------------------------------------------------------------------
# Hugging Face diffusers folders.
# ----------------------------------------------------------------------------------------------


def from_diffusers(path: str, **overrides):
  """Reads a diffusers ``UNet2DModel`` folder -> (model, params), our ``ddpm_unet``.

  The architecture comes from its ``config.json`` (``diffusers_io.fields_from_unet_config``);
  ``overrides`` may set only the runtime fields (dtype, remat, attention_chunk, dropout).
  A ``scheduler_config.json`` beside it must be the linear-beta epsilon DDPM our samplers assume.
  """
  model, params, _ = diffusers_io.load(path, **overrides)
  return model, params


def to_diffusers(model, params, out_dir: str, policy=None, policy_params=None, overwrite: bool = False) -> str:
  """Writes (model, params) of our DDPM UNet as a diffusers ``UNet2DModel`` folder.

  With ``policy`` (a var / ddim / ddpm policy around ``model``) and its params
  ({"net", "log_sigma"}), the learned T-step sampler is written beside it as
  ``dxmi_sampler.json`` (docs/checkpoints.md; docs/examples/sample_exported.py samples with it).
  """
  return diffusers_io.save(model, params, out_dir, policy=policy, policy_params=policy_params, overwrite=overwrite)


def workdir_policy(workdir: str, best: bool = False):
  """(policy, policy params {"net", "log_sigma"}) of a trained dxmi-jax run (its config.json and
  latest or best checkpoint)."""
  import ml_collections  # pylint: disable=import-outside-toplevel

  from dxmi_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from dxmi_jax.policies import build_policy  # pylint: disable=import-outside-toplevel

  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(cfg_path):
    raise CheckpointError(f"--workdir: {cfg_path} is missing (not a dxmi-jax training run)")
  if not ckpt_lib.has_checkpoint(workdir):
    raise CheckpointError(f"--workdir: no checkpoint under {os.path.join(workdir, 'checkpoints')}")
  with open(cfg_path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  net_cfg = {k: v for k, v in config.policy.net.items() if k != "arch"}
  if config.policy.net.arch != diffusers_io.ARCH:
    raise CheckpointError(
      f"--workdir: the run's policy network is {config.policy.net.arch!r}; only {diffusers_io.ARCH!r} exports to diffusers"
    )
  net = registry.build(diffusers_io.ARCH, net_cfg)
  policy = build_policy(config, net)
  raw, _ = ckpt_lib.load_raw(workdir, best=best)
  return policy, jax.tree.map(jnp.asarray, raw["policy"]["params"])


# ----------------------------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------------------------


def _parse_override(item: str) -> Tuple[str, Any]:
  if "=" not in item:
    raise argparse.ArgumentTypeError(f"--override expects key=value, got {item!r}")
  key, raw = item.split("=", 1)
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw  # bare strings, e.g. dtype=bfloat16
  return key.strip(), value


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  overrides = dict(args.override)
  if args.to_diffusers or args.diffusers:
    return _main_diffusers(args, overrides)
  return _main_torch(args, overrides)


def _parser() -> argparse.ArgumentParser:
  """The command line of ``main``."""
  parser = argparse.ArgumentParser(
    prog="python -m dxmi_jax.convert",
    description="Convert an official DxMI/DDPM/EDM PyTorch checkpoint into an Orbax "
    "checkpoint directory (params + extras + dxmi_network.json).",
  )
  parser.add_argument("--arch", choices=sorted(_EXTRA_KEYS), help="the network; optional with --yaml, which names it")
  parser.add_argument(
    "--yaml",
    help="an official YAML config (configs/<exp>/<T>.yaml) that built the "
    "checkpoint: its network section gives the architecture",
  )
  parser.add_argument(
    "--part",
    choices=("sampler", "value"),
    default="sampler",
    help="with --yaml: the sampler network or the value network",
  )
  parser.add_argument("--in", dest="src", help=".pt/.pth file")
  parser.add_argument(
    "--diffusers",
    metavar="FOLDER",
    help="instead of --in: a Hugging Face diffusers UNet2DModel folder (config.json + "
    "diffusion_pytorch_model.safetensors or .bin); the architecture comes from it",
  )
  parser.add_argument(
    "--to_diffusers",
    action="store_true",
    help="export instead: the policy network of --workdir as a diffusers UNet2DModel folder "
    "at --out, with its T-step sampler in dxmi_sampler.json",
  )
  parser.add_argument("--workdir", help="with --to_diffusers: a trained dxmi-jax run")
  parser.add_argument("--best", action="store_true", help="with --to_diffusers: the best checkpoint, not the latest")
  parser.add_argument("--out", required=True, help="output directory (must not exist)")
  parser.add_argument(
    "--override",
    action="append",
    default=[],
    type=_parse_override,
    metavar="KEY=VALUE",
    help="config override, e.g. ch_mult=(1,2,2); repeatable",
  )
  parser.add_argument("--force", action="store_true", help="replace an existing --out")
  return parser


def _main_torch(args, overrides) -> int:
  """The --in form of ``main``: an official PyTorch checkpoint (architecture from --arch or --yaml)."""
  if args.workdir or args.best:
    print("error: --workdir/--best: only with --to_diffusers", file=sys.stderr)
    return 2
  if not args.src:
    print("error: --in: required (a .pt/.pth file), or --diffusers=FOLDER, or --to_diffusers", file=sys.stderr)
    return 2
  if args.yaml:
    try:
      arch, fields = official_names.network_from_yaml(args.yaml, args.part)
    except ValueError as e:
      print(f"error: --yaml: {e}", file=sys.stderr)
      return 2
    if args.arch and args.arch != arch:
      print(f"error: --arch={args.arch} but {args.yaml} builds {arch}", file=sys.stderr)
      return 2
    args.arch = arch
    overrides = dict(fields, **overrides)
  elif not args.arch:
    print("error: --arch: required (or --yaml with an official config)", file=sys.stderr)
    return 2
  if os.path.exists(args.out) and not args.force:
    print(f"error: {args.out} already exists (pass --force to replace it)", file=sys.stderr)
    return 2
  try:
    _, params, extras = from_torch_with_extras(args.src, args.arch, **overrides)
    out = save_pretrained(args.out, args.arch, params, extras, overwrite=args.force, **overrides)
  except (CheckpointError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(params))
  print(f"wrote {out}: arch={args.arch}, {n} params, extras={sorted(extras)}")
  return 0


def _main_diffusers(args, overrides) -> int:
  """The --diffusers (import) and --to_diffusers (export) forms of ``main``."""
  if args.to_diffusers and args.diffusers:
    print("error: --diffusers and --to_diffusers: give one (import a folder, or export a run)", file=sys.stderr)
    return 2
  clash = [f"--{n}" for n in ("in", "arch", "yaml") if getattr(args, "src" if n == "in" else n)]
  if clash:
    print(f"error: {', '.join(clash)}: not used with --diffusers / --to_diffusers", file=sys.stderr)
    return 2
  if os.path.exists(args.out) and not args.force:
    print(f"error: {args.out} already exists (pass --force to replace it)", file=sys.stderr)
    return 2
  if args.to_diffusers:
    if not args.workdir:
      print("error: --workdir: required with --to_diffusers (a trained dxmi-jax run)", file=sys.stderr)
      return 2
    if overrides:
      print("error: --override: not used with --to_diffusers", file=sys.stderr)
      return 2
    try:
      policy, pp = workdir_policy(args.workdir, best=args.best)
      out = to_diffusers(policy.net, pp["net"], args.out, policy=policy, policy_params=pp, overwrite=args.force)
    except (CheckpointError, FileExistsError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(f"wrote {out}: UNet2DModel (config.json, {diffusers_io.WEIGHTS_SAFETENSORS}) + {diffusers_io.SAMPLER_JSON}")
    return 0
  if args.workdir or args.best:
    print("error: --workdir/--best: only with --to_diffusers", file=sys.stderr)
    return 2
  try:
    _, params, fields = diffusers_io.load(args.diffusers, **overrides)
    out = save_pretrained(args.out, diffusers_io.ARCH, params, None, overwrite=args.force, **fields)
  except (CheckpointError, FileExistsError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  n = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(params))
  print(f"wrote {out}: arch={diffusers_io.ARCH} from the diffusers folder {args.diffusers}, {n} params")
  return 0


if __name__ == "__main__":
  sys.exit(main())
