"""Network registry: ``build(arch, cfg) -> nn.Module`` and ``default_config(arch)``.

A config is an ``ml_collections.ConfigDict`` whose fields are exactly the
module's constructor fields; ``dtype`` is stored by name ("float32",
"bfloat16") so configs stay JSON-serialisable.  New architectures (e.g. a
project's networks) join with ``register(arch, module_cls, default_config_fn, example_inputs_fn)``.

Every network is called as ``model.apply({"params": p}, x, t, y=None,
deterministic=True, rngs={"dropout": key})``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Type

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dxmi_jax.models.adm_unet import ADMUNet, adm_imagenet64
from dxmi_jax.models import ddgan as _ddgan
from dxmi_jax.models.ddpm_unet import DDPMUNet, ddpm_cifar10
from dxmi_jax.models.igebm import IGEBMValue, igebm_nh128
from dxmi_jax.models import official_names
from dxmi_jax.models.layers import canonical_dtype
from dxmi_jax.models.mlp import TimeMLP, mlp_default


def _image_inputs(cfg, batch: int):
  """(x, t, y) placeholders of an image network: NHWC zeros, t (B,), int labels or None."""
  size = cfg.get("resolution", cfg.get("image_size", 32))
  chans = cfg.get("in_channels", cfg.get("in_chan", 3))
  n_class = cfg.get("num_classes", cfg.get("n_class"))
  y = None if n_class is None else jnp.zeros((batch,), jnp.int32)
  return jnp.zeros((batch, size, size, chans), jnp.float32), jnp.zeros((batch,), jnp.float32), y


class Entry(NamedTuple):
  module: Type[nn.Module]
  default_config: Callable[[], ml_collections.ConfigDict]
  # (cfg, batch) -> (x, t, y) example inputs, used to initialise / shape params.
  example_inputs: Callable = _image_inputs


_REGISTRY: Dict[str, Entry] = {}


def register(
  arch: str,
  module: Type[nn.Module],
  default_config_fn: Callable[[], ml_collections.ConfigDict],
  example_inputs_fn: Optional[Callable] = None,
) -> None:
  """Adds (or replaces) an architecture.

  ``example_inputs_fn(cfg, batch) -> (x, t, y)`` gives inputs of the right shapes
  (default: NHWC images sized by ``resolution``/``image_size``).
  """
  _REGISTRY[arch] = Entry(module, default_config_fn, example_inputs_fn or _image_inputs)


def archs():
  return sorted(_REGISTRY)


def _entry(arch: str) -> Entry:
  if arch not in _REGISTRY:
    raise ValueError(f"unknown network arch {arch!r}; registered: {archs()}")
  return _REGISTRY[arch]


def default_config(arch: str) -> ml_collections.ConfigDict:
  """A fresh copy of the arch's default (real-experiment) config."""
  return _entry(arch).default_config()


def resolve_config(arch: str, cfg=None, **overrides) -> ml_collections.ConfigDict:
  """default_config(arch) updated by ``cfg`` (a mapping) and ``overrides``; unknown keys fail.

  Sequences become tuples, integers given for float fields become floats and
  dtypes are stored by name, so ``ch_mult=[1, 2, 2]``, ``dropout=0`` and
  ``dtype=jnp.bfloat16`` all work.  The official YAML names (``num_channels``,
  ``class_cond``, ``attention_resolutions="32,16,8"``, ``channel_mult=""``, ...) are
  translated first (``official_names``).
  """
  out = default_config(arch)
  # the official YAML names are accepted too; overrides win over cfg
  merged = official_names.translate(arch, cfg or {})
  merged.update(official_names.translate(arch, overrides))
  unknown = sorted(set(merged) - set(out.keys()))
  if unknown:
    raise ValueError(f"unknown config key(s) {unknown} for arch {arch!r}; valid keys: {sorted(out.keys())}")
  with out.unlocked():
    for k, v in merged.items():
      if k == "dtype":
        v = canonical_dtype(v).name
      elif isinstance(v, (list, tuple)):
        v = tuple(v)
      elif isinstance(out[k], float) and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
      # ConfigDict is type-safe; None-able fields (e.g. num_classes) need a fresh slot.
      del out[k]
      out[k] = v
  return out


def build(arch: str, cfg=None, *, conv_mode: Optional[str] = None, **overrides) -> nn.Module:
  """The flax module of ``arch`` for ``cfg`` (missing keys take the defaults).

  ``conv_mode``: the convolution formulation (models/conv.py ``MODES``) of a network with
  convolutions (a ``conv_mode`` field); a compilation setting, not part of the architecture
  config, so it is given here rather than in ``cfg``.  None: the network's default ("auto").
  """
  entry = _entry(arch)
  cfg = resolve_config(arch, cfg, **overrides)
  kwargs = dict(cfg)
  fields = {f.name for f in dataclasses.fields(entry.module)}
  if "dtype" in kwargs and "dtype" in fields:
    kwargs["dtype"] = canonical_dtype(kwargs["dtype"])
  if conv_mode is not None and "conv_mode" in fields:
    kwargs["conv_mode"] = conv_mode
  return entry.module(**kwargs)


def example_inputs(arch: str, cfg=None, batch: int = 1):
  """(x, t, y) placeholders with the shapes ``arch`` under ``cfg`` expects."""
  return _entry(arch).example_inputs(resolve_config(arch, cfg), batch)


def init(arch: str, cfg=None, rng=None) -> Tuple[nn.Module, dict]:
  """Builds ``arch`` and initialises its params (PyTorch-default initialisers)."""
  model = build(arch, cfg)
  x, t, y = example_inputs(arch, cfg)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return model, jax.jit(model.init)(rng, x, t, y)["params"]


def param_shapes(arch: str, cfg=None) -> dict:
  """The param tree of ``arch`` as ShapeDtypeStructs (no compute, cheap for real configs)."""
  return jax.eval_shape(lambda: init(arch, cfg)[1])


def config_to_json_dict(cfg: Mapping) -> dict:
  """Plain JSON-able dict of a config (tuples -> lists)."""
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(cfg).items()}


register("ddpm_unet", DDPMUNet, ddpm_cifar10)
register("adm_unet", ADMUNet, adm_imagenet64)
register("igebm", IGEBMValue, igebm_nh128)
register("ddgan_ncsnpp", _ddgan.DDGANGenerator, _ddgan.ddgan_cifar10, _ddgan.example_inputs)
register("mlp", TimeMLP, mlp_default)
