"""Sample with a DxMI-fine-tuned network exported by `python -m dxmi_jax.convert --to_diffusers`.

Plain PyTorch plus diffusers' UNet2DModel; no dxmi-jax.  Usage:
  python docs/examples/sample_exported.py EXPORTED_DIR --num=16 --out=samples.npz
"""

import argparse
import json
import os

import numpy as np
import torch
from diffusers import UNet2DModel


@torch.no_grad()
def sample(folder, num, seed=0):
  """x_0 ~ N(0, prior_std^2 I); x_{t+1} = x_coef[t] x_t + eps_coef[t] unet(x_t, timesteps[t]) + sigma[t] z_t."""
  unet = UNet2DModel.from_pretrained(folder).eval()
  spec = json.load(open(os.path.join(folder, "dxmi_sampler.json")))
  gen = torch.Generator().manual_seed(seed)
  c, s = unet.config.in_channels, unet.config.sample_size
  x = spec["prior_std"] * torch.randn(num, c, s, s, generator=gen)
  for tau, a, b, sigma in zip(spec["timesteps"], spec["x_coef"], spec["eps_coef"], spec["sigma"]):
    eps = unet(x, torch.full((num,), tau)).sample  # a float tensor: non-integer times stay exact
    x = a * x + b * eps + sigma * torch.randn(x.shape, generator=gen)
  return x  # (num, C, H, W) in the data scale, [-1, 1] for images


if __name__ == "__main__":
  p = argparse.ArgumentParser()
  p.add_argument("folder")
  p.add_argument("--num", type=int, default=16)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="samples.npz")
  args = p.parse_args()
  x = sample(args.folder, args.num, args.seed)
  images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
  np.savez(args.out, images)  # uint8 (num, H, W, C), as dxmi-jax's samples.npz
  print(f"wrote {args.out}: {images.shape}")
