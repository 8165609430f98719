"""Records the DDGAN golden vectors of tests/golden/ddgan on CPU (see README.md there).

Run from the root of an exported, CPU-patched DDGAN tree:  python record_ddgan.py OUT_DIR
"""
import argparse
import hashlib
import os
import sys
import types

import numpy as np
import torch

# test_ddgan.py imports torchvision and pytorch_fid at module level for its FID/IO helpers, which
# are not used here; stub them so that its schedule and sampling functions can be imported.
for name in ("torchvision", "pytorch_fid", "pytorch_fid.fid_score"):
  sys.modules[name] = types.ModuleType(name)
sys.modules["pytorch_fid.fid_score"].calculate_fid_given_paths = None

import test_ddgan as T  # noqa: E402
from score_sde.models.ncsnpp_generator_adagn import NCSNpp  # noqa: E402

def ddgan_args(**kw):
  """train_ddgan.py's argument defaults with the CIFAR-10 exp1 generator flags, overridden by kw."""
  d = dict(image_size=32, num_channels=3, centered=True, num_channels_dae=128, n_mlp=4, ch_mult=[1,2,2,2],
           num_res_blocks=2, attn_resolutions=(16,), dropout=0., resamp_with_conv=True, conditional=True,
           fir=True, fir_kernel=[1,3,3,1], skip_rescale=True, resblock_type='biggan', progressive='none',
           progressive_input='residual', progressive_combine='sum', embedding_type='positional',
           fourier_scale=16., not_use_tanh=False, nz=100, z_emb_dim=256, num_timesteps=4, beta_min=0.1,
           beta_max=20., use_geometric=False)
  d.update(kw)
  return argparse.Namespace(**d)


torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)

CONFIGS = {
    # the exp1 family at toy size: BigGAN AdaGN blocks, FIR, residual input pyramid, tanh
    "small": dict(image_size=16, num_channels_dae=16, ch_mult=[1, 2, 2], num_res_blocks=1,
                  attn_resolutions=(8,), nz=8, z_emb_dim=16, n_mlp=2, num_timesteps=4),
    # the other supported switches: no FIR (naive resampling, plain stride-2 pyramid conv), no
    # skip rescale, no tanh, two res blocks, attention at the top resolution
    "small_nofir": dict(image_size=8, num_channels_dae=16, ch_mult=[1, 2], num_res_blocks=2,
                        attn_resolutions=(8,), nz=4, z_emb_dim=8, n_mlp=1, fir=False,
                        skip_rescale=False, not_use_tanh=True, num_timesteps=4),
    # no input pyramid
    "tiny_nopyramid": dict(image_size=8, num_channels_dae=8, ch_mult=[1, 2], num_res_blocks=1,
                           attn_resolutions=(4,), nz=4, z_emb_dim=8, n_mlp=1,
                           progressive_input="none", num_timesteps=4),
}


def perturb(model, seed, scale=0.1):
  g = torch.Generator().manual_seed(seed)
  sd = model.state_dict()
  with torch.no_grad():
    for v in sd.values():
      if v.is_floating_point():
        v += scale * torch.randn(v.shape, generator=g)
  return sd


class Recorder:
  """Wraps torch.randn / randn_like to keep a copy of every draw (the draws are unchanged)."""

  def __init__(self):
    self.draws = []
    self._randn, self._randn_like = torch.randn, torch.randn_like

  def __enter__(self):
    def randn(*a, **k):
      out = self._randn(*a, **k)
      self.draws.append(("randn", out.detach().clone()))
      return out

    def randn_like(*a, **k):
      out = self._randn_like(*a, **k)
      self.draws.append(("randn_like", out.detach().clone()))
      return out
    torch.randn, torch.randn_like = randn, randn_like
    return self

  def __exit__(self, *exc):
    torch.randn, torch.randn_like = self._randn, self._randn_like


def main():
  for seed, (name, over) in enumerate(CONFIGS.items()):
    args = ddgan_args(**over)
    torch.manual_seed(0)
    model = NCSNpp(args)
    sd = perturb(model, 100 + seed)
    model.load_state_dict(sd)
    model.eval()
    # the DDP layout of netG_*.pth ("module." prefix, bare state_dict)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, f"{OUT}/{name}.pt")
    with open(f"{OUT}/{name}_keys.txt", "w") as f:
      for k, v in model.state_dict().items():
        f.write(f"{k}\t{tuple(v.shape)}\t{str(v.dtype).replace('torch.', '')}\n")
    g = torch.Generator().manual_seed(7 + seed)
    B, C, H = 4, args.num_channels, args.image_size
    x = torch.randn(B, C, H, H, generator=g)
    t = torch.tensor([3, 2, 1, 0], dtype=torch.int64)
    z = torch.randn(B, args.nz, generator=g)
    with torch.no_grad():
      out = model(x, t, z)
    rec = {"x": x.numpy(), "t": t.numpy(), "z": z.numpy(), "out": out.numpy()}
    if name == "small":
      coeff = T.Posterior_Coefficients(args, "cpu")
      for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                "posterior_mean_coef1", "posterior_mean_coef2", "posterior_log_variance_clipped"):
        rec["coef/" + k] = getattr(coeff, k).numpy()
      sig, a_s, betas_full = T.get_sigma_schedule(args, "cpu")
      rec["coef/sigma_schedule_betas"] = betas_full.numpy()
      # one posterior step at mixed per-sample t, with the generator's x0 and recorded noise
      torch.manual_seed(11)
      with torch.no_grad(), Recorder() as r:
        x0 = model(x, t, z)
        x_prev = T.sample_posterior(coeff, x0, x, t)
      (kind, noise), = r.draws
      assert kind == "randn_like"
      rec.update({"step/x0": x0.numpy(), "step/noise": noise.numpy(), "step/x_prev": x_prev.numpy()})
      # the 4-step rollout of sample_from_model from x_init, recording z and the noise of each step
      torch.manual_seed(12)
      x_init = torch.randn(B, C, H, H)
      with Recorder() as r:
        x_final = T.sample_from_model(coeff, model, args.num_timesteps, x_init, None, args)
      kinds = [k for k, _ in r.draws]
      assert kinds == ["randn", "randn_like"] * args.num_timesteps, kinds
      rec["rollout/x_init"] = x_init.numpy()
      rec["rollout/z"] = np.stack([d.numpy() for k, d in r.draws if k == "randn"])
      rec["rollout/noise"] = np.stack([d.numpy() for k, d in r.draws if k == "randn_like"])
      rec["rollout/x_final"] = x_final.numpy()
      # intermediate states: rerun the loop of sample_from_model step by step with the same draws
      xs = [x_init]
      with torch.no_grad():
        for s, i in enumerate(reversed(range(args.num_timesteps))):
          tt = torch.full((B,), i, dtype=torch.int64)
          x0s = model(xs[-1], tt, torch.from_numpy(rec["rollout/z"][s]))
          mean, _, logv = (T.extract(coeff.posterior_mean_coef1, tt, x.shape) * x0s
                           + T.extract(coeff.posterior_mean_coef2, tt, x.shape) * xs[-1], None,
                           T.extract(coeff.posterior_log_variance_clipped, tt, x.shape))
          mask = (1 - (tt == 0).type(torch.float32))[:, None, None, None]
          xs.append(mean + mask * torch.exp(0.5 * logv) * torch.from_numpy(rec["rollout/noise"][s]))
      np.testing.assert_array_equal(xs[-1].numpy(), x_final.numpy())
      rec["rollout/states"] = torch.stack(xs).numpy()
    np.savez_compressed(f"{OUT}/{name}_io.npz", **rec)
    n = sum(v.numel() for v in model.state_dict().values())
    print(name, len(model.state_dict()), "tensors", n, "params", "out std", float(out.std()),
          "max|out|", float(out.abs().max()))
  # the layout of the real CIFAR-10 exp1 generator (netG_1200.pth without "module."), no weights
  torch.manual_seed(0)
  full = NCSNpp(ddgan_args()).state_dict()
  with open(f"{OUT}/cifar10_exp1_keys.txt", "w") as f:
    f.write(f"# DDGAN CIFAR-10 exp1 generator: {len(full)} tensors, "
            f"{sum(v.numel() for v in full.values())} parameters\n")
    for k, v in full.items():
      f.write(f"{k}\t{tuple(v.shape)}\t{str(v.dtype).replace('torch.', '')}\n")
  for fn in sorted(os.listdir(OUT)):
    p = os.path.join(OUT, fn)
    print(fn, os.path.getsize(p), hashlib.sha256(open(p, "rb").read()).hexdigest())


if __name__ == "__main__":
  main()
