"""CIFAR-10, T=10, DDPM backbone (official configs/cifar10/T10.yaml; reference §5).

Trainer semantics (DxMI_Trainer): Adam, one random policy minibatch of B transitions
per iteration, policy grad clip 0.1 (UNet weights and log-sigmas together), dropout 0.1
on in the policy update only, shared value/energy (IGEBM nh128, time-independent), no
value clip, no energy clip.  Samples are exported with round-to-nearest, as the
official PNG path does.

    python main.py --config=configs/cifar10.py --workdir=... \
        --config.init.policy_checkpoint=pretrained/cifar10_ddpm/model.ckpt.pth

Variants (comma-separated, any order):
  ``:smoke``     tiny network of the same family, synthetic data, 2 iterations, CPU;
  ``:t4``        VAR T=4 on the DDPM UNet (not a paper row: see t4_ddgan);
  ``:t4_ddgan``  the paper's CIFAR-10 T=4 row (official configs/cifar10/T4_ddgan.yaml): DDGAN's
                 NCSN++ generator (exp1, 48.4M) in its 4-step posterior sampler with a fresh latent
                 z per step, fix_last log-sigmas, value_resample True, 100 epochs
                 (``dxmi_jax/policies/ddgan.py``; DxMI's DDGANSampler is not released, so parts of
                 it are inferred and marked there).  Start it from DDGAN's released generator:
                     --config.init.policy_checkpoint=.../ddgan_cifar10_exp1/netG_1200.pth
  ``:t4_ddgan,smoke``  its CPU smoke run (tiny generator, 2 iterations, samples).
"""

from configs import default


def get_config(variant: str = ""):
  c = default.get_config()
  c.experiment = "cifar10"
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.random_flip = True

  c.policy.num_steps = 10
  c.policy.net = default.network("ddpm_unet")  # ch 128, (1,2,2,2), 2 blocks, attn 16, dropout 0.1
  c.value = default.network("igebm")  # IGEBMEncoderV2 nh 128
  c.energy = c.value.copy_and_resolve_references()

  c.dxmi.tau1 = 0.1
  c.dxmi.tau2 = 0.01

  c.training.batch_size = 128
  c.training.num_iters = 78000  # 200 epochs x 390 iterations
  c.training.seed = 112233
  c.training.log_every = 50
  c.training.checkpoint_every = 390
  c.training.eval_every = 390  # every epoch: FID proxy on 10k samples when configured
  c.training.best_metric = "fid_proxy_10000"
  c.eval.fid_num_samples = 10000

  c.init.policy_checkpoint = "pretrained/cifar10_ddpm/model.ckpt.pth"
  c.sample.num = 50000

  variants = list(filter(None, variant.split(",")))
  for v in variants:
    if v not in ("smoke", "t4", "t4_ddgan"):
      raise ValueError(f"configs/cifar10.py: unknown variant {v!r}; expected smoke, t4 or t4_ddgan")
  if "t4" in variants and "t4_ddgan" in variants:
    raise ValueError(
      "configs/cifar10.py: variants t4 (VAR on the DDPM UNet) and t4_ddgan (DDGAN) are alternatives; pick one"
    )
  if "t4" in variants:
    c.policy.num_steps = 4
  if "t4_ddgan" in variants:  # the backbone first, so that smoke shrinks the DDGAN generator
    t4_ddgan(c)
  if "smoke" in variants:
    smoke(c, image_size=32)
  return c


def t4_ddgan(c):
  """Official configs/cifar10/T4_ddgan.yaml (reference §4.5 and §5): DDGAN backbone, T=4."""
  c.experiment = "cifar10_t4_ddgan"
  c.policy.kind = "ddgan"
  c.policy.num_steps = 4  # DDGAN exp1's num_timesteps
  c.policy.trainable_sigma = "fix_last"
  c.policy.beta_min = 0.1  # DDGAN's VP schedule (train_ddgan.py defaults)
  c.policy.beta_max = 20.0
  c.policy.net = default.network("ddgan_ncsnpp")  # exp1: nf 128, (1,2,2,2), 2 blocks, nz 100, 4-layer MLP
  c.dxmi.value_resample = True  # the only CIFAR config with value_resample
  c.training.num_iters = 39000  # 100 epochs x 390 iterations
  c.init.policy_checkpoint = "ddgan_checkpoints/cifar10/ddgan_cifar10_exp1/netG_1200.pth"


def smoke(c, image_size):
  """A tiny network of the same family, synthetic data and 2 iterations: runs on a 2-core CPU."""
  c.experiment += "_smoke"
  c.data.name = "synthetic"
  c.data.image_size = image_size
  c.data.random_flip = True
  c.data.num_workers = 1
  net = c.policy.net
  if net.arch == "ddgan_ncsnpp":  # one level (the middle attention only): it compiles in half the time
    net.num_channels_dae, net.ch_mult, net.num_res_blocks = 16, (1,), 1
    net.attn_resolutions, net.image_size = (), image_size
    net.nz, net.z_emb_dim, net.n_mlp = 8, 16, 1
  elif net.arch == "ddpm_unet":
    net.ch, net.ch_mult, net.num_res_blocks, net.attn_resolutions = 32, (1, 2), 1, (image_size // 2,)
    net.resolution = image_size
  else:
    net.model_channels, net.channel_mult, net.num_res_blocks = 32, (1, 2), 1
    net.attention_resolutions, net.num_head_channels, net.image_size = (image_size // 2,), 16, image_size
    if c.data.class_cond:
      c.data.num_classes = 10
      net.num_classes = 10
  c.value.nh = 16
  c.training.batch_size = 8
  c.training.num_iters = 2
  c.training.log_every = 1
  c.training.checkpoint_every = 2
  c.training.eval_every = 0
  c.training.best_metric = ""
  c.init.policy_checkpoint = ""
  c.sample.num = 16
  c.sample.batch_size = 8
  c.pretrain.num_iters = 2
  c.pretrain.batch_size = 8
