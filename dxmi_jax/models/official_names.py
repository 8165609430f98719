"""The official code's configuration names, translated to our network fields.

The official YAML configs build networks with other names than our Flax modules:
the ADM UNet through ``models/cm/script_util.create_model`` (``num_channels``,
``class_cond``, ``attention_resolutions="32,16,8"``, ``channel_mult=""``,
``learn_sigma``, ``use_fp16``, ...), the IGEBM value with a few switches that
only have one released setting.  ``translate(arch, fields)`` maps such a mapping
onto our field names, so that ``registry.resolve_config`` (and with it every
network config and ``convert.from_torch``) accepts either spelling.

One meaning of ``attention_resolutions`` everywhere: **feature-map resolutions**
at which attention runs (64-px ImageNet with "32,16,8" attends at 32, 16 and
8 px), which is what the YAML string says.  ``create_model`` turns that string
into downsampling factors for ``UNetModel``; we never use factors.

A key given in both spellings is an error (one meaning per config), and so is
an official switch set to a value the released networks never use (for example
``use_new_attention_order=True``): the message names the key.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

#: create_model's channel_mult when the YAML leaves it "" (by image size)
ADM_DEFAULT_CHANNEL_MULT = {
  512: (0.5, 1, 1, 2, 2, 4, 4),
  256: (1, 1, 2, 2, 4, 4),
  128: (1, 1, 2, 3, 4),
  64: (1, 2, 3, 4),
}
#: create_model hard-codes the class count of class_cond models
ADM_NUM_CLASSES = 1000

#: keys of the official YAML sections that configure no network weight: the
#: diffusion sampler's schedule, the training loss, Hydra's target
IGNORED = frozenset({"_target_", "sigma_min", "sigma_max", "weight_schedule", "distillation"})


def _int_tuple(value, key: str):
  """ "32,16,8" / [32, 16, 8] / 16 -> (32, 16, 8)."""
  if isinstance(value, str):
    try:
      return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
      raise ValueError(f"{key}: expected comma-separated integers, got {value!r}") from None
  if isinstance(value, (list, tuple)):
    return tuple(int(v) for v in value)
  return (int(value),)


def _rename(out: Dict[str, Any], official: str, ours: str, value):
  if ours in out:
    raise ValueError(f"both {official!r} (official name) and {ours!r} are given; use one")
  out[ours] = value


def _require(key: str, value, allowed):
  if value != allowed:
    raise ValueError(f"{key}={value!r} is not supported (the released networks use {allowed!r})")


def _adm(fields: Mapping[str, Any]) -> Dict[str, Any]:
  out = {
    k: v
    for k, v in fields.items()
    if k not in ("num_channels", "class_cond", "learn_sigma", "use_fp16", "use_checkpoint", "use_new_attention_order")
  }
  if "num_channels" in fields:
    _rename(out, "num_channels", "model_channels", int(fields["num_channels"]))
  if "class_cond" in fields:
    if "num_classes" in fields and not fields["class_cond"] and fields["num_classes"] is not None:
      raise ValueError(f"class_cond=False contradicts num_classes={fields['num_classes']}")
    out["num_classes"] = (fields.get("num_classes") or ADM_NUM_CLASSES) if fields["class_cond"] else None
  if "learn_sigma" in fields:
    _rename(out, "learn_sigma", "out_channels", 6 if fields["learn_sigma"] else 3)
  if "use_fp16" in fields and "dtype" not in fields:
    # the official fp16 torso; parameters stay float32 either way
    out["dtype"] = "bfloat16" if fields["use_fp16"] else "float32"
  # use_checkpoint (torch gradient checkpointing) changes memory, not numbers: accepted and
  # dropped; rematerialisation is our own option of the training config.
  if "use_new_attention_order" in fields:
    _require("use_new_attention_order", bool(fields["use_new_attention_order"]), False)
  if "attention_resolutions" in out:
    out["attention_resolutions"] = _int_tuple(out["attention_resolutions"], "attention_resolutions")
  if "channel_mult" in out:
    cm = out["channel_mult"]
    if isinstance(cm, str) and not cm.strip():
      size = int(out.get("image_size", 64))
      if size not in ADM_DEFAULT_CHANNEL_MULT:
        raise ValueError(
          f'channel_mult="" has no default for image_size={size}; '
          f'give it, e.g. "1,2,2" (defaults exist for {sorted(ADM_DEFAULT_CHANNEL_MULT)})'
        )
      out["channel_mult"] = ADM_DEFAULT_CHANNEL_MULT[size]
    elif isinstance(cm, str):
      out["channel_mult"] = _int_tuple(cm, "channel_mult")
  return out


def _igebm(fields: Mapping[str, Any]) -> Dict[str, Any]:
  out = {k: v for k, v in fields.items() if k not in ("use_spectral_norm", "keepdim", "avg_pool_dim")}
  if "use_spectral_norm" in fields:
    _require("use_spectral_norm", bool(fields["use_spectral_norm"]), False)
  if "keepdim" in fields:
    _require("keepdim", bool(fields["keepdim"]), False)
  if "avg_pool_dim" in fields:
    _require("avg_pool_dim", int(fields["avg_pool_dim"]), 1)
  return out


def _ddpm(fields: Mapping[str, Any]) -> Dict[str, Any]:
  out = dict(fields)
  if isinstance(out.get("attn_resolutions"), str):
    out["attn_resolutions"] = _int_tuple(out["attn_resolutions"], "attn_resolutions")
  return out


_TRANSLATORS = {"adm_unet": _adm, "igebm": _igebm, "ddpm_unet": _ddpm}


def translate(arch: str, fields: Mapping[str, Any]) -> Dict[str, Any]:
  """``fields`` with the official names of ``arch`` replaced by ours (others pass through)."""
  fields = {k: v for k, v in dict(fields).items() if k not in IGNORED}
  fn = _TRANSLATORS.get(arch)
  return fn(fields) if fn else fields


# ---------------------------------------------------------------- official YAML files
_UNET_SMALL = "models.DxMI.unet_small.Model"
_IGEBM = "models.modules.IGEBMEncoderV2"


def network_from_yaml(path: str, part: str = "sampler"):
  """(arch, fields) of the network an official YAML config builds; part: "sampler" or "value".

  sampler: the ``diffusion:`` section (ADM UNet through create_model; ``sampler.num_classes``
  gives the class count of a class_cond model) or ``sampler_net:`` (the DDPM UNet);
  value: ``value.net`` (IGEBMEncoderV2).  Raises ValueError naming the file and the section.
  """
  import yaml  # pylint: disable=import-outside-toplevel

  if part not in ("sampler", "value"):
    raise ValueError(f"part: expected 'sampler' or 'value', got {part!r}")
  try:
    with open(path, encoding="utf-8") as f:
      doc = yaml.safe_load(f)
  except OSError as e:
    raise ValueError(f"{path}: cannot read the YAML config ({e.strerror})") from None
  except yaml.YAMLError as e:
    raise ValueError(f"{path}: not a YAML file ({type(e).__name__})") from None
  if not isinstance(doc, dict):
    raise ValueError(f"{path}: expected a YAML mapping of sections, got {type(doc).__name__}")
  if part == "value":
    net = (doc.get("value") or {}).get("net")
    if not isinstance(net, dict) or net.get("_target_") != _IGEBM:
      raise ValueError(f"{path}: value.net is not an {_IGEBM} section")
    return "igebm", translate("igebm", net)
  if isinstance(doc.get("diffusion"), dict):
    fields = dict(doc["diffusion"])
    sampler = doc.get("sampler") or {}
    if fields.get("class_cond") and sampler.get("num_classes"):
      fields["num_classes"] = int(sampler["num_classes"])
    return "adm_unet", translate("adm_unet", fields)
  net = doc.get("sampler_net")
  if isinstance(net, dict) and net.get("_target_") == _UNET_SMALL:
    return "ddpm_unet", translate("ddpm_unet", net)
  target = net.get("_target_") if isinstance(net, dict) else None
  raise ValueError(
    f"{path}: no sampler network this reader knows (a diffusion: section, or sampler_net "
    f"with _target_ {_UNET_SMALL}); found sampler_net._target_={target!r}"
  )
