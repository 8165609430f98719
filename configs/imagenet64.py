"""ImageNet-64, class-conditional, EDM backbone (official configs/imagenet64/T10.yaml and T4.yaml).

Trainer semantics (DxMI_Trainer_Cond): RAdam for the policy (lr 1e-8, log-sigmas 1e-6,
no clip), all T policy minibatches per iteration (every transition once), value TD grad
clip 0.1, skip_sampler_tau 3 at T=10, Adam 1e-5 for value/energy, shared IGEBM value.
The official fp16 loss scaling is replaced by bfloat16 activations (params float32),
which needs no loss scale.  Samples are exported by truncation ((x+1)*127.5 -> uint8), as
the official ImageNet path does.  Data: the ILSVRC train folder with ADM center-crop
preprocessing (config.data.path), what the EDM checkpoint and the reference statistics
use; ``--config.data.name=imagenet64`` reads tfds imagenet_resized/64x64 instead.

    python main.py --config=configs/imagenet64.py --workdir=... \
        --config.data.path=/data/ILSVRC2012/train \
        --config.init.policy_checkpoint=pretrained/imagenet64_edm/edm_imagenet64_ema.pt

Variants: ``:t4`` (T=4, rho 4, stochastic last step), ``:smoke`` (tiny ADM UNet, synthetic
data, 2 iterations, CPU), ``:lowmem`` (rematerialisation, attention and policy gradient in
chunks, FSDP: ``lowmem`` below); combine as ``:t4,smoke``.
"""

from configs import cifar10, default


def get_config(variant: str = ""):
  c = default.get_config()
  c.experiment = "imagenet64_t10"
  c.data.name = "imagenet64_folder"
  c.data.path = "datasets/ILSVRC2012/train"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.random_flip = True
  c.data.class_cond = True
  c.data.num_classes = 1000

  c.policy.kind = "edm"
  c.policy.num_steps = 10
  c.policy.net = default.network("adm_unet")  # 192 ch, (1,2,3,4), 3 blocks, attn 32/16/8, 1000 classes
  c.policy.net.dtype = "bfloat16"
  c.value = default.network("igebm")
  c.energy = c.value.copy_and_resolve_references()

  c.dxmi.tau1 = 0.1
  c.dxmi.tau2 = 0.01
  c.dxmi.skip_sampler_tau = 3
  c.dxmi.policy_minibatches = 10  # all T minibatches

  c.optim.policy = "radam"
  c.optim.policy_lr = 1e-8
  c.optim.policy_sigma_lr = 1e-6
  c.optim.policy_grad_clip = 0.0
  c.optim.value_grad_clip = 0.1

  c.training.batch_size = 128
  c.training.num_iters = 10000
  c.training.seed = 42
  c.training.log_every = 20
  c.training.checkpoint_every = 100
  c.training.eval_every = 100  # FID proxy on 5k samples vs VIRTUAL_imagenet64_labeled when configured
  c.training.best_metric = "fid_proxy_5000"

  c.init.policy_checkpoint = "pretrained/imagenet64_edm/edm_imagenet64_ema.pt"
  c.sample.num = 50000
  c.sample.batch_size = 256
  c.sample.rounding = "truncate"

  for v in filter(None, variant.split(",")):
    if v == "t4":
      t4(c)
    elif v == "smoke":
      cifar10.smoke(c, image_size=16)
    elif v == "lowmem":
      lowmem(c)
    else:
      raise ValueError(f"configs/imagenet64.py: unknown variant {v!r}; expected t4, smoke or lowmem")
  return c


def lowmem(c):
  """Every memory option of the big ADM configs (docs/parallelism.md).

  Compile-only figures of the T=10 step at B=128 (benchmarks/scaling.py, option set
  chunked_attn, XLA:CPU memory analysis): 8.5 GB of temporaries on 1 device and 5.9 GB per
  device at 8, against 205 / 20.4 GB without.  Only the summation order of the policy
  gradient changes (and the dropout masks, when dropout is on).
  """
  c.policy.net.remat = "blocks"
  c.value.remat = "blocks"
  c.energy.remat = "blocks"
  c.policy.net.attention_chunk = 256  # the 32x32 stages in 4 blocks of queries
  c.perf.policy_grad_chunk_rows = 4  # each policy gradient over chunks of 4 rows per device
  c.training.fsdp = True


def t4(c):
  c.experiment = c.experiment.replace("t10", "t4")
  c.policy.num_steps = 4
  c.policy.rho = 4.0
  c.policy.stochastic_last = True
  c.dxmi.skip_sampler_tau = 0
  c.dxmi.policy_minibatches = 4
  c.training.num_iters = 100000
