"""Anomaly detection with an EBM trained by DxMI without MCMC (the paper's MVTec-AD experiment).

The experiment is the anomaly project (``dxmi_jax/proj/anomaly``), built the authors' way
(their value-gradient-sampler release, after MPDR):

* **Energy**: an autoencoder's reconstruction error, E(x) = s^2 mean_d (x - x_hat)^2 / temperature
  (``ae_energy``), first pretrained by reconstruction on the training normals (a stage of the
  train command, reused when ``<workdir>/pretrain_energy`` holds it), then trained as an EBM by
  DxMI's EV trainer.  The energy stays O(1): it is a mean over the D coordinates *and* the
  energy loss carries the square penalty gamma = 1 (the authors' setting).
* **Negatives**: the chains start from training rows diffused by ``data.start_noise``
  (``data.start="data"``), not from N(0, I), and the policy is a residual Gaussian step
  x + sigma_t f(x, t) + sigma_t eps whose drift f starts at zero and whose sigmas start at
  ``policy.init_sigma``.  Both noise levels are in units of the data's own per-coordinate
  scale (provider.py), so one config serves tables and sphere features alike.  With unit-sphere inputs every
  policy step is projected back onto the sphere (``policy.manifold="sphere"``).
* **The EV trainer** (``DxMI_Trainer_EV``, pinned by tests/test_dxmi_golden_ev.py): a separate
  energy network, velocity and entropy in the TD targets, resampled next states, AVR from
  sigma; here with gamma = 1 and energy Adam 1e-4 as the authors' EBM trainer.

Data: ``--config.data.name=npz --config.data.path=TRAIN.npz`` with ``X`` (N, D), all normal,
z-scored with the training statistics (``data.normalize``); or, variant ``features``, a
UniAD-style feature file (``data.name=uniad``) whose every location is one unit-sphere vector.
A seeded ``data.val_fraction`` of the training rows is held out for the training-only
diagnostics (the ``anomaly`` evaluator); nothing is chosen on test data.
Score: ``--mode=score --config.score.input=IN.npz --config.score.output=OUT.npy`` writes one
energy per row of IN's ``X``; for a feature file, ``OUT.npz`` with ``image_score`` (the max of
each energy map) and ``pixel_map`` (the map upsampled to the mask size).

Variants (comma-separated):
  sphere     unit-sphere vectors (e.g. image embeddings): normalised latent and reconstruction
             (latent 128), temperature 0.1, a policy on the sphere, starts diffused along it
  features   ``sphere`` on UniAD feature maps: ``data.name=uniad``, every location one vector,
             784 locations a batch (the authors' 4 maps x 196)
  tau0       tau1 = tau2 = 0 (no entropy bonus, no velocity cost: the paper's ablation)
  mcmc       the Langevin EBM: the same pretrained autoencoder energy trained with short-run
             Langevin negatives from the same chain starts (proj/anomaly/mcmc.py)
  ae_only    the pretrained autoencoder alone: no DxMI iteration (num_iters = 0)
  mlp        the official EV trainer as released: an MLP energy trained from scratch, no
             gamma, chains from N(0, I) (the golden EV test pins this variant's DxMIConfig)
  smoke      tiny networks and few iterations, for tests (put it last)
Widths: the authors' autoencoder is 1024 wide; 256 here keeps the benchmark within its CPU
budget (benchmarks/table_anomaly.py).
"""

from configs import default
from dxmi_jax.proj import anomaly as _anomaly  # noqa: F401  (registers the project's networks)


def get_config(variant: str = ""):
  c = default.get_config()
  c.experiment = "anomaly"
  c.project = "anomaly"
  c.data.name = "npz"
  c.data.normalize = "zscore"  # zscore | sphere | none
  c.data.start = "data"  # data: chains start from diffused training rows; prior: N(0, I)
  c.data.start_noise = 1.0  # per-coordinate std of the diffusion of the starts, x the data's scale
  c.data.start_steps = 10
  c.data.val_fraction = 0.1  # held out of the training rows for the diagnostics
  c.data.classes = ""  # uniad: train on these clsnames only ("" = all: one unified model)
  c.policy.kind = "residual"
  c.policy.num_steps = 5
  c.policy.manifold = "euclidean"
  c.policy.init_sigma = 0.1  # x the data's scale (provider.relative_scales)
  c.policy.drift_units = "sigma"  # the drift f in units of sigma_t, so it follows the data's scale too
  c.policy.net = default.network(
    "mlp", hidden=(256, 256), time_scale=1.0 / c.policy.num_steps, time_embed_dim=0, zero_out=True
  )
  c.value = default.network("mlp", out_dim=1, hidden=(256, 256), time_scale=-1.0)
  c.energy = default.network("ae_energy", hidden=(256, 256, 256), latent=0, normalize=False, temperature=1.0)
  # the EV trainer
  c.dxmi.separate_energy = True
  c.dxmi.gamma = 1.0
  c.dxmi.tau1 = 0.01
  c.dxmi.tau2 = 0.01
  c.dxmi.time_cost_sig = 0.0
  c.dxmi.velocity_in_value = 0  # 1[t < T - 0]: every step
  c.dxmi.entropy_in_value = 0
  c.dxmi.skip_sampler_tau = 0
  c.dxmi.value_resample = True
  c.dxmi.policy_minibatches = 1
  c.dxmi.avr_init = "sigma"
  c.dxmi.policy_train_mode = False  # no dropout in an MLP
  c.optim.policy_lr = 1e-4
  c.optim.policy_sigma_lr = 1e-3
  c.optim.policy_grad_clip = 0.1
  c.optim.value_lr = 1e-3
  c.optim.value_grad_clip = 0.0
  c.optim.energy_lr = 1e-4
  c.optim.energy_grad_clip = 0.1
  c.init.pretrain_energy = True  # train: reconstruction-pretrain the ae_energy first (or reuse it)
  c.pretrain_energy = default.ml_collections.ConfigDict()
  c.pretrain_energy.num_iters = 1500
  c.pretrain_energy.batch_size = 128
  c.pretrain_energy.lr = 1e-3
  c.mcmc = default.ml_collections.ConfigDict()  # the Langevin EBM (variant mcmc; proj/anomaly/mcmc.py)
  c.mcmc.steps = 20
  c.mcmc.step_size = 0.01  # x the data's scale squared
  c.mcmc.temperature = -1.0  # <= 0: DxMI's, tau1 / D
  c.training.num_iters = 1000
  c.training.batch_size = 128
  c.training.log_every = 100
  c.training.checkpoint_every = 1000
  c.eval.evaluators = "anomaly"
  c.sample.batch_size = 1000
  for v in filter(None, variant.split(",")):
    if v in ("features", "sphere"):
      if v == "features":
        c.data.name = "uniad"
        c.training.batch_size = 784  # the authors' 4 maps x 196 locations
        c.pretrain_energy.batch_size = 784
      c.data.normalize = "sphere"
      c.policy.manifold = "sphere"
      c.energy.latent = 128
      c.energy.normalize = True
      c.energy.temperature = 0.1
    elif v == "tau0":
      c.dxmi.tau1 = 0.0
      c.dxmi.tau2 = 0.0
    elif v == "mcmc":
      c.trainer = "mcmc"
    elif v == "ae_only":
      c.training.num_iters = 0
    elif v == "mlp":  # the official EV trainer as released (tests/test_dxmi_golden_ev.py pins it)
      c.energy = default.network("energy_mlp", hidden=(128, 128))
      c.init.pretrain_energy = False
      c.dxmi.gamma = 0.0
      c.data.start = "prior"
    elif v == "smoke":
      c.policy.net.hidden = (16,)
      c.value.hidden = (16,)
      if c.energy.arch == "ae_energy":
        c.energy.hidden = (16,)
        c.energy.latent = min(c.energy.latent, 8) if c.energy.latent > 0 else 0
      else:
        c.energy.hidden = (16,)
      c.pretrain_energy.num_iters = 50
      c.pretrain_energy.batch_size = 32
      c.training.num_iters = 20
      c.training.batch_size = 16
      c.training.log_every = 10
      c.training.checkpoint_every = 20
      c.sample.batch_size = 64
      c.sample.num = 64
    else:
      raise ValueError(
        f"configs/anomaly.py: unknown variant {v!r}; expected features, sphere, tau0, mcmc, ae_only, mlp or smoke"
      )
  return c
