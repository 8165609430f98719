"""Seconds per iteration of the official PyTorch ``DxMI_Trainer``, for comparison with ours.

Runs in the official code's own virtualenv (docs/speed.md has the set-up: torch 2.13.0, numpy<2), on a
clone of swyoon/Diffusion-by-MaxEntIRL:

    /path/to/official-venv/bin/python benchmarks/official_step_time.py \\
        --official=/path/to/Diffusion-by-MaxEntIRL --preset=digits --batch=32 --steps=10 --iters=10

One iteration is what ``train_cifar10.py``'s loop does per batch with n_critic = n_generator = 1: a
rollout of the sampler without gradients, ``update_f_v`` (energy step and the TD value steps), then
``update_sampler``, with a fresh buffer each time. The networks have the shapes of our configs:

  2d      VARSampler (fix_last) around an epsilon MLP of [x, sinusoidal time features] (3 x 128, SiLU),
          a time-dependent value MLP of [x, t/T] (3 x 128): configs/gaussians2d.py.  The official
          release has no 2D config, so these two small networks are defined here; data: the official
          loader's 8 Gaussians.
  digits  the official DDPM UNet (ch 32, ch_mult (1, 2), 1 block, attention at 4x4) on 1x8x8 and the
          IGEBM value (nh 32): configs/digits.py.  Data: uniform noise of the image shape (time does
          not depend on the pixel values).
  cifar   the official configs/cifar10/T10.yaml networks (35.7M UNet, IGEBM nh 128) on 3x32x32.

Prints one JSON line: median seconds per iteration after ``--warmup`` untimed ones, and the set-up.
This file imports nothing of dxmi_jax (the official virtualenv has no jax).
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
import types

TRAINER_KWARGS = dict(  # configs/cifar10/T10.yaml's trainer section, which configs/digits.py follows
  tau1=0.1,
  tau2=0.01,
  gamma=1,
  use_sampler_beta=True,
  time_cost=0,
  adavelreg=0.99,
  entropy_in_value=None,
  velocity_in_value=None,
  time_cost_sig=True,
)
PRESETS = ("2d", "digits", "cifar")


def fail(msg):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--official", required=True, help="clone of swyoon/Diffusion-by-MaxEntIRL")
  p.add_argument("--preset", choices=PRESETS, default="digits")
  p.add_argument("--batch", type=int, default=32, help="batch size B")
  p.add_argument("--steps", type=int, default=10, help="sampler steps T")
  p.add_argument("--iters", type=int, default=10, help="timed iterations")
  p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
  p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
  a = p.parse_args(argv)
  for name in ("batch", "steps", "iters"):
    if getattr(a, name) < 1:
      fail(f"--{name} must be >= 1, got {getattr(a, name)}")
  if a.warmup < 0:
    fail(f"--warmup must be >= 0, got {a.warmup}")
  if not os.path.isfile(os.path.join(a.official, "models", "DxMI", "trainer.py")):
    fail(
      f"--official: {a.official!r} has no models/DxMI/trainer.py; expected a clone of "
      "https://github.com/swyoon/Diffusion-by-MaxEntIRL"
    )
  return a


def import_official(root):
  """Puts the official repo on the path.  Its karras_diffusion.py imports torchvision at module level
  for a class these paths never use; where torchvision is not installed, a stand-in module satisfies
  that one import."""
  sys.path.insert(0, os.path.abspath(root))
  if importlib.util.find_spec("torchvision") is None:
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.RandomCrop = None
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms})


def networks_2d(torch, T, width=128, features=32):
  nn = torch.nn

  def mlp(d_in, d_out):
    layers, d = [], d_in
    for _ in range(3):
      layers += [nn.Linear(d, width), nn.SiLU()]
      d = width
    return nn.Sequential(*layers, nn.Linear(d, d_out))

  class EpsMLP(nn.Module):
    """eps(x, t) of [x, sin(t w), cos(t w)], as dxmi_jax.models.mlp.TimeMLP for 2D points."""

    def __init__(self):
      super().__init__()
      half = features // 2
      self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1)))
      self.body = mlp(2 + features, 2)

    def forward(self, x, t):
      n = x.shape[0]
      angle = t.reshape(-1, 1).float() * self.freqs
      angle = angle.expand(n, -1)
      return self.body(torch.cat([x.reshape(n, 2), angle.sin(), angle.cos()], 1)).reshape(x.shape)

  class TimeValue(nn.Module):
    """V(x, t / T), a time-dependent value: the official trainer calls v(x, t)."""

    def __init__(self):
      super().__init__()
      self.body = mlp(3, 1)

    def forward(self, x, t, y=None):
      n = x.shape[0]
      tt = torch.as_tensor(t, dtype=torch.float32, device=x.device).reshape(-1, 1).expand(n, 1) / T
      return self.body(torch.cat([x.reshape(n, 2), tt], 1))

  return EpsMLP(), TimeValue(), [2, 1, 1]


def networks_image(preset):
  from models.DxMI.unet_small import Model
  from models.modules import IGEBMEncoderV2
  from models.value import TimeIndependentValue

  if preset == "digits":
    net = Model(
      resolution=8, in_channels=1, out_ch=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=[4], dropout=0.1
    )
    shape, nh = [1, 8, 8], 32
  else:
    net = Model(
      resolution=32,
      in_channels=3,
      out_ch=3,
      ch=128,
      ch_mult=(1, 2, 2, 2),
      num_res_blocks=2,
      attn_resolutions=[16],
      dropout=0.1,
    )
    shape, nh = [3, 32, 32], 128
  encoder = IGEBMEncoderV2(
    in_chan=shape[0],
    out_chan=1,
    use_spectral_norm=False,
    keepdim=False,
    out_activation="linear",
    avg_pool_dim=1,
    learn_out_scale=True,
    nh=nh,
  )
  return net, TimeIndependentValue(encoder), shape


def main(argv=None):
  a = parse_args(argv)
  try:
    import numpy as np
    import torch
  except ImportError as e:
    fail(f"{e}; run this file with the official code's virtualenv (docs/speed.md)")
  if int(np.__version__.split(".")[0]) >= 2:
    print(f"warning: numpy {np.__version__}; the official code is documented for numpy<2", file=sys.stderr)
  import_official(a.official)
  from models.DxMI.trainer import DxMI_Trainer, append_buffer, reset_buffer
  from models.DxMI.var_sampler import VARSampler

  torch.manual_seed(0)
  dev = torch.device(a.device)
  if a.preset == "2d":
    net, value, shape = networks_2d(torch, a.steps)
    spec = importlib.util.spec_from_file_location(
      "official_synthetic", os.path.join(a.official, "loader", "synthetic.py")
    )
    synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic)

    def data():
      return torch.from_numpy(synthetic.sample2d("8gaussians", a.batch)).float().reshape(a.batch, *shape).to(dev)

  else:
    net, value, shape = networks_image(a.preset)

    def data():
      return torch.rand(a.batch, *shape, device=dev) * 2 - 1

  sampler = VARSampler(net, n_timesteps=a.steps, sample_shape=shape, trainable_beta="fix_last").to(dev)
  value = value.to(dev)
  others = [p for n, p in net.named_parameters() if "log_betas" not in n]
  opt = torch.optim.Adam([{"params": net.log_betas, "lr": 1e-5}, {"params": others, "lr": 1e-7}])
  opt_v = torch.optim.Adam(value.parameters(), lr=1e-5)
  trainer = DxMI_Trainer(batchsize=a.batch, n_timesteps=a.steps, **TRAINER_KWARGS)
  trainer.set_models(f=None, v=value, sampler=sampler, optimizer=opt, optimizer_fstar=None, optimizer_v=opt_v)

  def sync():
    if dev.type == "cuda":
      torch.cuda.synchronize()

  def iteration():
    x = data()
    buffer = reset_buffer(dev)
    sampler.eval()
    d_sample = sampler.sample(a.batch, device=dev)
    append_buffer(buffer, d_sample)
    trainer.update_f_v(x, d_sample, buffer)
    trainer.update_sampler(buffer, 1)

  times = []
  for i in range(a.warmup + a.iters):
    sync()
    t0 = time.perf_counter()
    iteration()
    sync()
    if i >= a.warmup:
      times.append(time.perf_counter() - t0)
  times.sort()
  record = {
    "impl": "official-pytorch",
    "preset": a.preset,
    "T": a.steps,
    "batch": a.batch,
    "median_s_per_iter": float(np.median(times)),
    "p10_s": float(np.percentile(times, 10)),
    "p90_s": float(np.percentile(times, 90)),
    "n": len(times),
    "torch": torch.__version__,
    "numpy": np.__version__,
    "threads": torch.get_num_threads(),
    "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
    "machine": f"{platform.machine()}, {os.cpu_count()} cores",
  }
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
