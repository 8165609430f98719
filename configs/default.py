"""Base configuration shared by every experiment; experiment files override it.

Public names (scripts rely on them): config.data.name, config.data.path,
config.policy.num_steps (T), config.training.num_iters, config.training.batch_size,
config.training.seed, config.training.checkpoint_every, config.dxmi.tau1,
config.dxmi.tau2, config.dxmi.gamma.

Optional integers use -1 for "unset" (ConfigDict fields are typed; a string or
None cannot replace an int from the command line).
"""

import ml_collections


def network(arch: str, base=None, **overrides) -> ml_collections.ConfigDict:
  """A network section: the arch's constructor fields (``base`` or its defaults, plus overrides) and ``arch``."""
  from dxmi_jax.models import registry  # pylint: disable=import-outside-toplevel

  c = registry.resolve_config(arch, base, **overrides)
  with c.unlocked():
    c.arch = arch
  return c


def get_config():
  c = ml_collections.ConfigDict()
  c.experiment = "base"
  c.project = ""  # a project under dxmi_jax/proj/ that the experiment needs (e.g. "anomaly"), or ""
  c.trainer = "dxmi"  # the train step: dxmi, or one a project registers (e.g. the anomaly project's mcmc)

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  c.data.name = "8gaussians"  # 8gaussians | 2spirals | checkerboard | npy | cifar10 | imagenet64 | lsun | digits | ...
  c.data.path = ""  # npy file (vector data) or image folder
  c.data.split = "train"  # the split trained on: tfds split name; digits: train | fit | val | test
  c.data.tfds_data_dir = ""  # tfds data_dir ("" = tfds default)
  c.data.image_size = 0  # 0 for vector data
  c.data.channels = 0
  c.data.random_flip = False
  c.data.class_cond = False
  c.data.num_classes = 0
  c.data.preprocessing = "adm_center_crop"
  c.data.num_workers = 8

  # -------------------------------------------------------------- policy
  c.policy = ml_collections.ConfigDict()
  c.policy.kind = "var"  # var | ddim | ddpm | edm | residual | ddgan (dxmi_jax/policies)
  c.policy.manifold = "euclidean"  # euclidean | sphere (every state projected onto the unit sphere)
  c.policy.num_steps = 5  # T
  c.policy.trainable_sigma = "fix_last"
  c.policy.sigma_min = 0.002  # edm
  c.policy.sigma_max = 80.0  # edm
  c.policy.rho = 7.0  # edm
  c.policy.stochastic_last = False  # edm
  c.policy.sigma_data = 0.5  # edm
  c.policy.net = ml_collections.ConfigDict()
  c.policy.net.arch = "mlp"  # the remaining keys are the arch's constructor fields
  c.policy.net.out_dim = 2
  c.policy.net.hidden = (128, 128, 128)
  c.policy.net.time_scale = 1.0 / 1000.0
  c.policy.net.time_embed_dim = 32
  c.policy.net.dtype = "float32"

  # ------------------------------------------------------ value / energy
  c.value = ml_collections.ConfigDict()
  c.value.arch = "mlp"
  c.value.out_dim = 1
  c.value.hidden = (128, 128, 128)
  c.value.time_scale = -1.0  # mlp: < 0 means 1/T (time-dependent value sees t / T)
  c.value.time_embed_dim = 0
  c.value.dtype = "float32"

  c.energy = ml_collections.ConfigDict()  # only used when dxmi.separate_energy
  c.energy.arch = "mlp"
  c.energy.out_dim = 1
  c.energy.hidden = (128, 128, 128)
  c.energy.time_scale = 0.0
  c.energy.time_embed_dim = 0
  c.energy.dtype = "float32"

  # ------------------------------------------------------ DxMI algorithm
  c.dxmi = ml_collections.ConfigDict()
  c.dxmi.tau1 = 0.1  # entropy weight
  c.dxmi.tau2 = 0.01  # velocity weight
  c.dxmi.gamma = 1.0  # energy square penalty
  c.dxmi.adavelreg = 0.99  # AVR EMA factor; < 0 disables AVR
  c.dxmi.time_cost_sig = 1.0
  c.dxmi.time_cost_center = -1  # -1: T // 2
  c.dxmi.time_cost = 0.0
  c.dxmi.velocity_in_value = -1  # -1: off
  c.dxmi.entropy_in_value = -1  # -1: off
  c.dxmi.skip_sampler_tau = 0
  c.dxmi.policy_minibatches = 1  # 1: CIFAR trainer; T: ImageNet trainer (every transition)
  c.dxmi.value_resample = False
  c.dxmi.policy_train_mode = True  # dropout on in the policy update (CIFAR)
  c.dxmi.separate_energy = False  # anomaly-detection trainer (reference §2 EV)
  c.dxmi.avr_init = "policy"  # policy | sigma (EV trainer: s_t = exp(log_sigma_init[T-1-t]))

  # ----------------------------------------------------------- optimisers
  c.optim = ml_collections.ConfigDict()
  c.optim.policy = "adam"  # adam | radam | sgd
  c.optim.policy_lr = 1e-7
  c.optim.policy_sigma_lr = 1e-5  # log-sigmas (official beta_lr)
  c.optim.policy_grad_clip = 0.1  # <= 0: none
  c.optim.value = "adam"
  c.optim.value_lr = 1e-5
  c.optim.value_grad_clip = 0.0  # TD steps; <= 0: none
  c.optim.energy = "adam"
  c.optim.energy_lr = 1e-5
  c.optim.energy_grad_clip = 0.0  # <= 0: none
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8

  # ------------------------------------------------------------ training
  c.training = ml_collections.ConfigDict()
  c.training.num_iters = 2000
  c.training.batch_size = 512  # global
  c.training.seed = 0
  c.training.log_every = 100
  c.training.checkpoint_every = 1000
  c.training.keep_checkpoints = 3
  c.training.eval_every = 0  # 0: evaluate only at the end
  c.training.eval_at_start = False  # also evaluate the starting state (step 0), as the official code does
  c.training.best_metric = ""  # e.g. "fid_proxy_5000"; "" keeps no best checkpoint
  c.training.max_consecutive_skips = 10
  c.training.async_checkpoints = True
  c.training.fsdp = False  # shard parameters and optimiser states over the data axis (big models)
  c.training.fsdp_min_size = 65536  # leaves with fewer elements stay replicated under fsdp

  # ------------------------------------------------------------- perf
  # How the iteration is compiled; the results do not depend on it (benchmarks/step_time.py).
  # Read where they act: dxmi.Perf (unrolls, chunks; dxmi_config.perf_from_config), the networks' conv_mode
  # (conv), compiler.options (cpu_dots); none of it enters dxmi.DxMIConfig.
  c.perf = ml_collections.ConfigDict()
  c.perf.rollout_unroll = 1  # rollout lax.scan: 1 a loop, k steps per trip, 0 fully unrolled
  c.perf.td_unroll = 1  # TD lax.scan, the same (unrolled: compiles ~2x longer, no faster on CPU)
  c.perf.policy_grad_chunks = 1  # K > 1: each policy minibatch's gradient over K chunks of rows (memory)
  c.perf.policy_grad_chunk_rows = 0  # r > 0: the same with K = batch / (devices x r): r rows per chunk and device
  c.perf.conv = "auto"  # models/conv.py: auto | xla | loop_safe (auto: loop_safe on CPU)
  c.perf.cpu_dots = "auto"  # compiler.py: auto | eigen | ynnpack (XLA:CPU's dot library; auto: eigen)

  # --------------------------------------------- initialisation / resume
  c.init = ml_collections.ConfigDict()
  c.init.policy_checkpoint = ""  # .pt/.pth (converted on the fly), Orbax dir, or a dxmi-jax workdir
  c.init.value_checkpoint = ""
  # train: DDPM-pretrain into <workdir>/pretrain first (or reuse it) and start DxMI from it.  False: never
  # (start from policy_checkpoint, or from scratch); True: always (a policy_checkpoint is then an error);
  # "auto": pretrain unless policy_checkpoint is given, which then wins.  Typed `object` so that it holds
  # a bool or "auto", from a config file or the command line (--config.init.pretrain_first=auto).
  c.init.pretrain_first = ml_collections.FieldReference(False, field_type=object)

  # ------------------------------------------------------------ pretrain
  c.pretrain = ml_collections.ConfigDict()  # DDPM epsilon-prediction pretraining (--mode=pretrain)
  c.pretrain.num_iters = 20000
  c.pretrain.batch_size = 512
  c.pretrain.lr = 1e-3
  c.pretrain.warmup = 200
  c.pretrain.ema = 0.999

  # -------------------------------------------------------------- sample
  c.sample = ml_collections.ConfigDict()
  c.sample.num = 10000
  c.sample.batch_size = 1000
  c.sample.labels = ""  # "" random labels; "3" or "1,2,3" fixed labels (class-conditional)
  c.sample.guidance_scale = 0.0  # value guidance g (0: none); see dxmi_jax/generation.py
  c.sample.guidance_sign = "descend"  # descend: x - g sigma grad V (ours) | official: x + g sigma grad V
  c.sample.rounding = "round"  # image export: round | truncate
  c.sample.seed = 0

  # ---------------------------------------------------------------- eval
  # --------------------------------------------------------------- score
  c.score = ml_collections.ConfigDict()  # --mode=score: energies of new samples (vector data)
  c.score.input = ""  # .npz holding X (N, D)
  c.score.output = ""  # .npy: (N,) float32 energies, higher = more anomalous
  c.score.batch_size = 4096

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 10000
  c.eval.sw_projections = 1000
  c.eval.sw_draws = 5  # SW and its floor: mean ± std over this many independent data draws
  c.eval.evaluators = ""  # comma-separated (vector, images, ...); "" picks by the data
  c.eval.noise_low = -4.0
  c.eval.noise_high = 4.0
  c.eval.inception_weights = ""
  c.eval.reference_stats = ""
  c.eval.fid_num_samples = 5000
  c.eval.digits_reference = "val"  # the digits evaluator's reference split (train | fit | val | test)
  return c
