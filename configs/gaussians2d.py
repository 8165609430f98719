"""The paper's 2D experiment: DxMI on 8 Gaussians (also 2spirals, checkerboard, npy).

Policy: the VAR DDPM-style Gaussian step (epsilon-prediction MLP, T-step schedule,
trainable log-sigmas with the last fixed), exactly the image sampler's code path.
Value: a time-dependent MLP V(x, t) of [x, t/T]; V(., T) is the energy.

Variants (``--config=configs/gaussians2d.py:<variant>``):
  default  DxMI from scratch, T=5  (the README's first command; a few minutes on 2 cores)
  t10      T=10
  tau0     tau1 = tau2 = 0 ablation
Fine-tuning from a DDPM: first ``--mode=pretrain`` in one workdir, then train with
``--config.init.policy_checkpoint=<that workdir>``.
"""
from configs import default


def get_config(variant: str = ""):
  c = default.get_config()
  c.experiment = "gaussians2d"
  c.data.name = "8gaussians"
  c.policy.num_steps = 5
  c.dxmi.policy_train_mode = False    # no dropout in an MLP
  # Learning rates chosen by a single-seed sweep of DxMI T=5 fine-tuning (SW after 3,000
  # iterations; policy 3e-5..1e-3, log-sigma 1e-4..3e-3, value 3e-4..3e-3).  Larger log-sigma
  # rates let sigma drift upwards: with AVR, s_t follows the step size, so the velocity cost
  # restrains log sigma with weight at most tau2 while the entropy pushes with tau1 = 10 tau2.
  c.optim.policy = "adam"
  c.optim.policy_lr = 1e-4
  c.optim.policy_sigma_lr = 3e-4
  c.optim.policy_grad_clip = 0.1
  c.optim.value = "adam"
  c.optim.value_lr = 1e-3
  c.optim.value_grad_clip = 0.0
  c.training.num_iters = 3000
  c.training.batch_size = 512
  c.training.log_every = 100
  c.training.checkpoint_every = 1000
  c.pretrain.num_iters = 5000
  c.pretrain.batch_size = 512
  c.pretrain.lr = 2e-3
  c.sample.num = 10000
  c.sample.batch_size = 10000
  for v in filter(None, variant.split(",")):
    if v == "t10":
      c.policy.num_steps = 10
    elif v == "tau0":
      c.dxmi.tau1 = 0.0
      c.dxmi.tau2 = 0.0
    else:
      raise ValueError(f"configs/gaussians2d.py: unknown variant {v!r}; expected t10 or tau0")
  return c
