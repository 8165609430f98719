"""CIFAR-10, T=10, DDPM backbone (official configs/cifar10/T10.yaml; reference §5).

Trainer semantics (DxMI_Trainer): Adam, one random policy minibatch of B transitions
per iteration, policy grad clip 0.1 (UNet weights and log-sigmas together), dropout 0.1
on in the policy update only, shared value/energy (IGEBM nh128, time-independent), no
value clip, no energy clip.  Samples are exported with round-to-nearest, as the
official PNG path does.

    python main.py --config=configs/cifar10.py --workdir=... \
        --config.init.policy_checkpoint=pretrained/cifar10_ddpm/model.ckpt.pth

Variants: ``:smoke`` (tiny UNet of the same family, synthetic data, 2 iterations, CPU),
``:t4`` (VAR T=4; the official T=4 uses the DDGAN backbone whose code is not released).
"""
from configs import default


def get_config(variant: str = ""):
  c = default.get_config()
  c.experiment = "cifar10"
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.random_flip = True

  c.policy.kind = "var"
  c.policy.num_steps = 10
  c.policy.trainable_sigma = "fix_last"
  c.policy.net = default.network("ddpm_unet")   # ch 128, (1,2,2,2), 2 blocks, attn 16, dropout 0.1
  c.value = default.network("igebm")             # IGEBMEncoderV2 nh 128
  c.energy = c.value.copy_and_resolve_references()

  c.dxmi.tau1 = 0.1
  c.dxmi.tau2 = 0.01
  c.dxmi.gamma = 1.0
  c.dxmi.adavelreg = 0.99
  c.dxmi.time_cost_sig = 1.0
  c.dxmi.time_cost = 0.0
  c.dxmi.skip_sampler_tau = 0
  c.dxmi.policy_minibatches = 1      # n_generator = 1
  c.dxmi.value_resample = False
  c.dxmi.policy_train_mode = True    # dropout on in the policy update

  c.optim.policy = "adam"
  c.optim.policy_lr = 1e-7
  c.optim.policy_sigma_lr = 1e-5
  c.optim.policy_grad_clip = 0.1
  c.optim.value = "adam"
  c.optim.value_lr = 1e-5
  c.optim.value_grad_clip = 0.0

  c.training.batch_size = 128
  c.training.num_iters = 78000       # 200 epochs x 390 iterations
  c.training.seed = 112233
  c.training.log_every = 50
  c.training.checkpoint_every = 390
  c.training.eval_every = 390        # every epoch: FID proxy on 10k samples when configured
  c.training.best_metric = "fid_proxy_10000"
  c.eval.fid_num_samples = 10000

  c.init.policy_checkpoint = "pretrained/cifar10_ddpm/model.ckpt.pth"
  c.sample.num = 50000
  c.sample.batch_size = 1000
  c.sample.rounding = "round"

  for v in filter(None, variant.split(",")):
    if v == "smoke":
      smoke(c, image_size=32)
    elif v == "t4":
      c.policy.num_steps = 4
    else:
      raise ValueError(f"configs/cifar10.py: unknown variant {v!r}; expected smoke or t4")
  return c


def smoke(c, image_size):
  """A tiny network of the same family, synthetic data and 2 iterations: runs on a 2-core CPU."""
  c.experiment += "_smoke"
  c.data.name = "synthetic"
  c.data.image_size = image_size
  c.data.random_flip = True
  c.data.num_workers = 1
  net = c.policy.net
  if net.arch == "ddpm_unet":
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
