"""Starting a run from pretrained weights (``config.init.*``).

``config.init.policy_checkpoint`` may be
  * a dxmi-jax workdir that ran ``--mode=pretrain`` (its ``pretrain/`` folder),
  * a dxmi-jax workdir with DxMI checkpoints (the latest policy is taken),
  * a params folder written by ``checkpoint.save_params`` (``params/`` + ``meta.json``),
  * a PyTorch ``.pt``/``.pth`` file or an Orbax folder from ``python -m dxmi_jax.convert``
    (converted on the fly through ``dxmi_jax.convert.load_pretrained``),
  * a Hugging Face diffusers ``UNet2DModel`` folder (``dxmi_jax.convert.from_diffusers``): its
    architecture replaces ``config.policy.net`` (``adopt_policy_architecture``, logged), keeping
    the config's runtime fields (dtype, remat, attention_chunk, dropout) when it is a ddpm_unet.
Checkpoints that carry ``log_betas`` (DxMI's own) also set the policy's log-sigmas,
after checking that their length is the config's T.
``config.init.value_checkpoint`` likewise for the value network.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax.errors import CheckpointError, ConfigError
from dxmi_jax.networks import net_config


def _match(what, new, ref):
  """Casts ``new`` onto ``ref``'s structure, with one error naming the first mismatch."""
  ref_flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(ref)[0]}
  new_flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(new)[0]}
  missing = sorted(set(ref_flat) - set(new_flat))
  unexpected = sorted(set(new_flat) - set(ref_flat))
  shapes = [
    f"{k}: checkpoint {np.shape(new_flat[k])} vs config {ref_flat[k].shape}"
    for k in sorted(set(ref_flat) & set(new_flat))
    if tuple(np.shape(new_flat[k])) != tuple(ref_flat[k].shape)
  ]
  problem = ckpt_lib.mismatch_summary(missing, unexpected, shapes)
  if problem:
    raise ConfigError(f"{what} does not fit the configured architecture: {problem}")
  return jax.tree.map(lambda n, r: jnp.asarray(n, r.dtype), new, ref)


#: policy kinds whose mean is built on a DDPM epsilon network (what a diffusers UNet2DModel is)
_DDPM_EPS_KINDS = ("var", "ddim", "ddpm")


def adopt_policy_architecture(config) -> bool:
  """When config.init.policy_checkpoint is a diffusers folder, sets config.policy.net to its
  architecture (before the networks are built); returns whether it did.

  The folder's config.json (and scheduler_config.json, if any) is checked first: a
  configuration our DDPM UNet cannot represent, or another noise schedule, is a ConfigError.
  """
  from dxmi_jax import diffusers_io  # pylint: disable=import-outside-toplevel

  path = config.init.get("policy_checkpoint", "") if "init" in config else ""
  if not path or not diffusers_io.is_diffusers_folder(path):
    return False
  what = "config.init.policy_checkpoint"
  if config.policy.kind not in _DDPM_EPS_KINDS:
    raise ConfigError(
      f"{what}: {path} is a diffusers DDPM (an epsilon network); config.policy.kind={config.policy.kind!r} "
      f"cannot use it (expected one of {_DDPM_EPS_KINDS})"
    )
  try:
    fields = diffusers_io.read_fields(path)
  except diffusers_io.CheckpointError as e:
    raise ConfigError(f"{what}: {e}") from None
  old = config.policy.net
  if old.get("arch") == diffusers_io.ARCH:
    fields.update({k: old[k] for k in diffusers_io.RUNTIME_FIELDS if k in old})
  from dxmi_jax.models import registry  # pylint: disable=import-outside-toplevel

  new = ml_collections.ConfigDict(dict(arch=diffusers_io.ARCH, **registry.resolve_config(diffusers_io.ARCH, fields)))
  with config.unlocked():
    config.policy.net = new
  changed = sorted(k for k in set(old.keys()) | set(new.keys()) if old.get(k) != new.get(k))
  logging.warning(
    "%s=%s is a diffusers UNet2DModel folder: its architecture replaced config.policy.net%s",
    what,
    path,
    f" (changed fields: {', '.join(changed)})" if changed else "",
  )
  return True


def _read_network(path, section, section_cfg, what):
  """(net params, log_sigma or None) from any supported checkpoint kind."""
  pre = os.path.join(path, "pretrain")
  if os.path.isdir(pre) and os.path.exists(os.path.join(pre, "meta.json")):
    path = pre
  if (
    os.path.isdir(path)
    and os.path.exists(os.path.join(path, "meta.json"))
    and os.path.isdir(os.path.join(path, "params"))
  ):
    params, _ = ckpt_lib.load_params(path)
    return params.get("net", params), params.get("log_sigma")
  if ckpt_lib.has_checkpoint(path):  # a dxmi-jax run: its latest state, whatever topology wrote it
    raw, _ = ckpt_lib.load_raw(path)
    p = raw["policy"]["params"] if section == "policy" else raw["value"]["params"]
    return (p["net"], p["log_sigma"]) if section == "policy" else (p, None)
  from dxmi_jax import convert  # pylint: disable=import-outside-toplevel

  arch, fields = net_config(section_cfg)
  if convert.diffusers_io.is_diffusers_folder(path):  # no log_sigma: the sampler starts from its schedule
    runtime = {k: fields[k] for k in convert.diffusers_io.RUNTIME_FIELDS if k in fields}
    try:
      _, params = convert.from_diffusers(path, **(runtime if arch == convert.diffusers_io.ARCH else {}))
    except CheckpointError as e:
      raise ConfigError(f"{what}: {e}") from None
    return params, None
  try:
    _, params, extras = convert.load_pretrained(path, arch, **fields)
  except CheckpointError as e:
    raise ConfigError(f"{what}: {e}") from None
  return params, (extras or {}).get("log_betas")


def load_pretrained_into(exp, state, policy_path=None):
  """``state`` with the weights of config.init.* (``policy_path`` replaces the policy's)."""
  cfg = exp.config
  policy_path = policy_path or cfg.init.policy_checkpoint
  if policy_path:
    what = (
      "config.init.pretrain_first" if policy_path != cfg.init.policy_checkpoint else "config.init.policy_checkpoint"
    )
    net, log_sigma = _read_network(policy_path, "policy", cfg.policy.net, what)
    params = dict(state.policy.params)
    params["net"] = _match(what, net, state.policy.params["net"])
    if log_sigma is not None:
      log_sigma = np.asarray(log_sigma, np.float32).reshape(-1)
      T = exp.dxmi.num_steps
      if log_sigma.shape != (T,):
        raise ConfigError(
          f"{what}: the checkpoint's log_betas has {log_sigma.shape[0]} steps but config.policy.num_steps is {T}"
        )
      params["log_sigma"] = jnp.asarray(log_sigma)
    state = state.replace(policy=state.policy.replace(params=params))
    logging.info("policy initialised from %s", policy_path)
  if cfg.init.value_checkpoint:
    what = "config.init.value_checkpoint"
    net, _ = _read_network(cfg.init.value_checkpoint, "value", cfg.value, what)
    state = state.replace(value=state.value.replace(params=_match(what, net, state.value.params)))
    logging.info("value initialised from %s", cfg.init.value_checkpoint)
  return state
