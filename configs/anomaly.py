"""Anomaly detection with an EBM trained by DxMI without MCMC (the paper's MVTec-AD experiment).

The EV trainer (``DxMI_Trainer_EV``, reference §2 EV; pinned by tests/test_dxmi_golden_ev.py):
* a separate energy network f (``energy_mlp``: x only, no time input) with its own Adam, loss
  mean f(data) - mean f(x_T) with **no gamma** term, gradient norm clipped at 0.1;
* a time-dependent value V(x, t/T) whose TD targets carry the full DxDP recursion
  V(x_{t+1}, t+1) [f(x_T) at t = T-1] + tau2 c_t - tau1 log sigma_t, no time cost, no clip;
* next states always resampled from the current policy (value_resample), and f at t = T-1 is
  taken at that resampled state;
* no non-terminal mask in the policy loss (skip_sampler_tau = 0);
* AVR scales initialised as the EV trainer does: s = exp(log_sigma) in its index order
  (avr_init = "sigma"); then the usual 0.99 EMA.
The policy is the VAR Gaussian step with an epsilon-prediction MLP, trained from scratch, for
vector features of any dimension D (read from the data).

Data: ``--config.data.name=npz --config.data.path=TRAIN.npz`` with ``X`` (N, D), all normal;
standardised with the training mean/std, which are stored with the checkpoint.
Score: ``--mode=score --config.score.input=IN.npz --config.score.output=OUT.npy`` writes one
float32 energy per row of IN's ``X`` (higher = more anomalous).

Hyper-parameters were set a priori (the 2D config's tau, Adam rates of the same order, a small
MLP at batch 128 so the benchmark's 300 trainings fit the CPU budget); none was tuned on a
test split.

Variants (comma-separated): ``smoke`` (tiny networks, 20 iterations, for tests); ``tau0``
(tau1 = tau2 = 0); ``featmap`` (convolutional policy/value/energy over (H, W, C) feature maps,
used through dxmi_jax/anomaly/featmap.py; put it after ``smoke`` to keep its networks).
"""

from configs import default


def get_config(variant: str = ""):
  c = default.get_config()
  c.experiment = "anomaly"
  c.data.name = "npz"
  c.policy.kind = "var"
  c.policy.num_steps = 5
  c.policy.net = default.network("mlp", hidden=(128, 128), time_scale=1.0 / 1000.0, time_embed_dim=32)
  c.value = default.network("mlp", out_dim=1, hidden=(128, 128), time_scale=-1.0)
  c.energy = default.network("energy_mlp", hidden=(128, 128))
  # the EV trainer
  c.dxmi.separate_energy = True
  c.dxmi.gamma = 0.0
  c.dxmi.time_cost_sig = 0.0
  c.dxmi.velocity_in_value = 0  # 1[t < T - 0]: every step
  c.dxmi.entropy_in_value = 0
  c.dxmi.skip_sampler_tau = 0
  c.dxmi.value_resample = True
  c.dxmi.policy_minibatches = 1
  c.dxmi.avr_init = "sigma"
  c.dxmi.policy_train_mode = False  # no dropout in an MLP
  c.optim.policy_lr = 1e-4
  c.optim.policy_sigma_lr = 3e-4
  c.optim.policy_grad_clip = 0.1
  c.optim.value_lr = 1e-3
  c.optim.value_grad_clip = 0.0
  c.optim.energy_lr = 1e-3
  c.optim.energy_grad_clip = 0.1
  c.training.num_iters = 1000
  c.training.batch_size = 128
  c.training.log_every = 100
  c.training.checkpoint_every = 1000
  c.eval.num_samples = 2000
  c.eval.sw_projections = 200
  c.sample.batch_size = 1000
  for v in filter(None, variant.split(",")):
    if v == "smoke":
      c.policy.net.hidden = (16,)
      c.policy.net.time_embed_dim = 8
      c.value.hidden = (16,)
      c.energy.hidden = (16,)
      c.training.num_iters = 20
      c.training.batch_size = 16
      c.training.log_every = 10
      c.training.checkpoint_every = 20
      c.eval.num_samples = 256
      c.eval.sw_projections = 16
      c.sample.batch_size = 64
      c.sample.num = 64
    elif v == "featmap":  # (H, W, C) feature maps: fully convolutional networks (anomaly/featmap.py)
      c.policy.net = default.network("conv_map", hidden=64, depth=2, time_scale=1.0 / 1000.0, reduce="none")
      c.value = default.network("conv_map", hidden=64, depth=2, time_scale=1.0 / c.policy.num_steps)
      c.energy = default.network("conv_map", hidden=64, depth=2)
      c.training.batch_size = 32
    elif v == "tau0":
      c.dxmi.tau1 = 0.0
      c.dxmi.tau2 = 0.0
    else:
      raise ValueError(f"configs/anomaly.py: unknown variant {v!r}; expected smoke or tau0")
  return c
