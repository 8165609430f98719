"""Reading PyTorch checkpoint files into numpy, without importing any network.

The converters (``dxmi_jax.convert``) and the Inception weights loader
(``dxmi_jax.models.inception``) both read ``.pt``/``.pth`` files through
``load_torch_state_dict``; it sits below both, so networks never import the
converters.  Torch is optional (extra ``[convert]``) and imported lazily.
"""

from __future__ import annotations

import argparse
import collections
import os
from typing import Dict, Tuple

import numpy as np

from dxmi_jax.errors import CheckpointError


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
      "Reading PyTorch checkpoints needs torch: pip install -e '.[convert]' (it pins the CPU wheel torch==2.13.0)."
    ) from e
  return torch


# "netG_dict": DDGAN's training-state file content.pth (netG beside netD and the optimisers).
_WRAPPER_KEYS = ("state_dict", "model", "ema", "net", "netG_dict")


def load_torch_state_dict(path: str) -> Tuple["collections.OrderedDict[str, np.ndarray]", Dict]:
  """Reads a .pt/.pth file into an ordered {key: float32/int numpy array} dict.

  Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and upcasts
  float16/bfloat16 tensors to float32 (exact).  Returns (state_dict, extras)
  where extras holds the non-tensor entries of the wrapper (e.g. "fid",
  "epoch").  Key prefixes are left alone; architecture-specific prefix handling
  (``module.``, ``net.``) belongs to the converters.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"checkpoint file not found: {path}")
  torch = _import_torch()
  try:
    # DDGAN's content.pth pickles its argparse.Namespace of training flags.
    with torch.serialization.safe_globals([argparse.Namespace]):
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 - torch.load's unpicklers raise many types
    # (RuntimeError, EOFError, UnpicklingError, IndexError, zipfile.BadZipFile, ...)
    raise CheckpointError(
      f"{path} is not a readable PyTorch checkpoint (truncated or not a torch.save file): {type(e).__name__}: {e}"
    ) from e
  extras = {}
  for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
    if isinstance(obj, dict) and not _is_tensor_dict(obj, torch):
      inner = next((k for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
      if inner is None:
        break
      extras.update({k: v for k, v in obj.items() if k != inner and not isinstance(v, dict)})
      obj = obj[inner]
  if not isinstance(obj, dict) or not obj or not _is_tensor_dict(obj, torch):
    raise CheckpointError(
      f"{path} holds no state_dict (expected a dict of tensors, optionally under "
      f"'state_dict' or 'model'; found {type(obj).__name__})"
    )
  out = collections.OrderedDict()
  for k, v in obj.items():
    if not isinstance(v, torch.Tensor):
      continue
    if v.is_floating_point():
      v = v.float()
    out[k] = v.detach().cpu().numpy()
  return out, extras


def _is_tensor_dict(d, torch) -> bool:
  return any(isinstance(v, torch.Tensor) for v in d.values())
