"""Network sections of the config (config.policy.net, config.value, config.energy) -> Flax modules.

Each section holds ``arch`` (a ``models.registry`` name) and that architecture's constructor
fields.  ``validate`` checks the sections before anything is built; ConfigError names the option.
"""

from __future__ import annotations

from dxmi_jax.errors import ConfigError
from dxmi_jax.models import attention, registry
from dxmi_jax.models.layers import REMAT_POLICIES


def validate(config) -> None:
  """Known architectures, remat policies, and attention chunks that divide every attended layer."""
  for key in ("policy.net", "value"):
    sub = config.policy.net if key == "policy.net" else config.value
    if sub.arch not in registry.archs():
      raise ConfigError(f"config.{key}.arch: unknown network {sub.arch!r}; expected one of {registry.archs()}")
  for key, sub in (("policy.net", config.policy.net), ("value", config.value), ("energy", config.energy)):
    if sub.get("remat", "none") not in REMAT_POLICIES:
      raise ConfigError(f"config.{key}.remat: expected one of {sorted(REMAT_POLICIES)}, got {sub.remat!r}")
    if "attention_chunk" in sub:
      for tokens in attended_tokens(sub):
        try:
          attention.check_chunk(sub.attention_chunk, tokens, where=f"config.{key}.attention_chunk")
        except ValueError as e:
          raise ConfigError(str(e)) from None


def attended_tokens(net) -> list:
  """H*W of every attention layer of a UNet config (ADM: attention_resolutions plus the middle
  block; DDPM: attn_resolutions plus the middle block)."""
  if net.arch == "adm_unet":
    size, levels, res = (
      net.get("image_size", 64),
      len(net.get("channel_mult", (1,))),
      net.get("attention_resolutions", ()),
    )
  elif net.arch == "ddpm_unet":
    levels = len(net.get("level_channels", ()) or net.get("ch_mult", (1,)))
    size, res = net.get("resolution", 32), net.get("attn_resolutions", ())
  else:
    return []
  if isinstance(res, str):  # the official "32,16,8" spelling
    res = [r for r in res.split(",") if r]
  return sorted({int(r) ** 2 for r in res} | {(size // 2 ** (levels - 1)) ** 2})


def net_config(sub) -> tuple:
  """(arch, constructor fields) of a network config section."""
  fields = {k: v for k, v in sub.items() if k != "arch"}
  return sub.arch, fields


def build_net(sub, conv_mode=None, **overrides):
  """``conv_mode``: config.perf.conv (models/conv.py), carried by the network's convolutions."""
  arch, fields = net_config(sub)
  fields.update(overrides)
  return registry.build(arch, fields, conv_mode=conv_mode)


def build_value(config):
  overrides = {}
  if config.value.arch == "mlp" and config.value.time_scale < 0:
    overrides["time_scale"] = 1.0 / config.policy.num_steps  # V(x, t) sees t / T
  return build_net(config.value, config.perf.conv, **overrides)
