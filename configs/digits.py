"""DxMI on scikit-learn's handwritten digits: the CIFAR-10 image pipeline, CPU-sized, on real data.

Data: ``sklearn.datasets.load_digits`` (1,797 real 8x8 grey images, 10 classes), the fixed
RNG-free splits of ``dxmi_jax.data.digits``: test 355, and train 1,442 in two parts, fit 1,261
and val 181.  Pretraining and DxMI train on *fit*; checkpoints are selected by the digits
metric (``dxmi_jax.metrics.digits_classifier``) against *val*; the benchmark reports the
metric against *test*, which neither training nor selection sees.  One channel in [-1, 1].

Image size 8 (native), not 16 (zero-padded).  The padded frame adds a 4-pixel border that
is always background: 4x the pixels per convolution for no information.  At 8x8 the DDPM
UNet with ch_mult (1, 2) downsamples once (8 -> 4) and attends at 4x4 (16 tokens) plus the
middle block; the IGEBM value downsamples three times (8 -> 4 -> 2 -> 1) and then sums over
the single remaining position, which is well defined.

Networks (the CIFAR-10 families, smaller):
  policy  DDPM UNet, ch 32, ch_mult (1, 2), 1 res block, attention at 4x4, dropout 0.1 (0.70M)
          (CIFAR: ch 128, (1, 2, 2, 2), 2 blocks, attention at 16, dropout 0.1).  GroupNorm(32)
          needs ch to be a multiple of 32.
  value   IGEBM (time-independent, shared value/energy), nh 32, in_chan 1 (CIFAR: nh 128).
  (ch 64 with 2 res blocks, 4.0M weights, took 2.8 s per pretraining step of 128: too slow.)

Pretraining (``--mode=pretrain``): DDPM epsilon prediction on the 1000-step linear schedule,
Adam with warm-up and an EMA of the weights (``dxmi_jax.pretrain``); 1,000 iterations of
batch 128, lr 1e-3 (100 warm-up steps), EMA 0.995 (0.999 would still hold 0.999^1000 = 37%
of the random init); about 10 minutes on 2 CPU cores.

DxMI fine-tuning: the CIFAR-10 trainer semantics unchanged (DxMI_Trainer: Adam, one random
policy minibatch of B transitions per iteration, policy grad clip 0.1 for the UNet and the
log-sigmas together, dropout on in the policy update, shared value/energy, no value clip,
tau1 0.1, tau2 0.01, gamma 1, AVR 0.99, sigmoid time cost).  Changed settings, and why:

  num_iters        78,000 -> 2,000  CPU budget (27-39 minutes per T=10 run on one core of ours).
  learning rates   scaled so that lr x iterations, the distance Adam can move each weight, equals
                   the CIFAR run's (78,000 / 2,000 = 39, rounded): policy 1e-7 -> 4e-6,
                   log-sigmas 1e-5 -> 4e-4, value 1e-5 -> 4e-4.  No search was run (no budget);
                   earlier evidence: with 40 iterations, 5e-5 (policy) / 1e-2 (sigmas) wrecked
                   the sampler (digits FD 19 -> 131), because the fresh value network gives no
                   useful gradient for its first ~20 iterations while Adam moves every weight
                   by about lr per step whatever the gradient's quality.
  batch_size       128 -> 32        CPU budget (one iteration rolls out B x T states).
  evaluation       the official trainer computes a training-time FID every epoch (from epoch 0,
                   the pretrained sampler) and keeps the best checkpoint; here the digits FD on
                   val every 100 iterations and at iteration 0 (``eval_at_start``), 500 samples,
                   best kept by ``best_metric=min:digits_fd`` (checkpoints_best/).
  seed             112233 kept (the benchmark sets training.seed per DxMI seed).

Variants (``--config=configs/digits.py:<variant>``, comma-separated):
  default  T=10                 t4  T=4
  tau0     tau1 = tau2 = 0 (no entropy bonus, no velocity cost: the ablation of the paper)
  tauscale=<k>   tau1 = 0.1 k, tau2 = 0.01 k (the tau study of benchmarks/table_digits.py; k >= 0,
           k = 1 is the default, k = 0 is tau0)
  lr_half      policy, sigma and value learning rates halved (2e-6, 2e-4, 2e-4)   } the two T=10
  vlr_quarter  value (= energy) learning rate / 4 (1e-4), the policy's unchanged   } overshoot variants
  smoke    tiny nets (UNet without downsampling, IGEBM nh 8), 2 pretrain and 2 DxMI
           iterations of batch 8, for tests.

    python main.py --config=configs/digits.py --workdir=runs/digits_ddpm --mode=pretrain
    python main.py --config=configs/digits.py --workdir=runs/digits_t10 \
        --config.init.policy_checkpoint=runs/digits_ddpm
"""

from configs import default

IMAGE_SIZE = 8
TAU1, TAU2 = 0.1, 0.01  # the CIFAR-10 trainer's; ``tauscale=<k>`` scales both by k


def get_config(variant: str = ""):
  c = default.get_config()
  c.experiment = "digits"
  c.data.name = "digits"
  c.data.image_size = IMAGE_SIZE
  c.data.channels = 1
  c.data.num_workers = 1
  c.data.split = "fit"

  c.policy.num_steps = 10
  c.policy.net = default.network(
    "ddpm_unet",
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    dropout=0.1,
    resolution=IMAGE_SIZE,
    in_channels=1,
    out_ch=1,
  )
  c.value = default.network("igebm", nh=32, in_chan=1)
  c.energy = c.value.copy_and_resolve_references()

  c.dxmi.tau1 = TAU1
  c.dxmi.tau2 = TAU2

  c.optim.policy_lr = 4e-6
  c.optim.policy_sigma_lr = 4e-4
  c.optim.value_lr = 4e-4

  c.training.batch_size = 32
  c.training.num_iters = 2000
  c.training.seed = 112233
  c.training.log_every = 10
  c.training.eval_every = 100
  c.training.eval_at_start = True
  c.training.best_metric = "min:digits_fd"
  c.training.checkpoint_every = 500
  c.training.keep_checkpoints = 1
  c.training.async_checkpoints = False

  c.pretrain.num_iters = 1000
  c.pretrain.batch_size = 128
  c.pretrain.warmup = 100
  c.pretrain.ema = 0.995

  c.sample.num = 1000
  c.sample.batch_size = 500
  c.eval.evaluators = "digits"
  c.eval.digits_reference = "val"
  c.eval.fid_num_samples = 500

  for v in filter(None, variant.split(",")):
    if v == "t4":
      c.policy.num_steps = 4
    elif v == "tau0":
      c.dxmi.tau1 = 0.0
      c.dxmi.tau2 = 0.0
    elif v.startswith("tauscale="):
      k = tau_scale(v.partition("=")[2])
      c.dxmi.tau1 = TAU1 * k
      c.dxmi.tau2 = TAU2 * k
    elif v == "lr_half":
      c.optim.policy_lr /= 2
      c.optim.policy_sigma_lr /= 2
      c.optim.value_lr /= 2
    elif v == "vlr_quarter":
      c.optim.value_lr /= 4
    elif v == "smoke":
      smoke(c)
    else:
      raise ValueError(
        f"configs/digits.py: unknown variant {v!r}; expected t4, tau0, tauscale=<k>, lr_half, vlr_quarter or smoke"
      )
  return c


def tau_scale(text: str) -> float:
  """The k of ``tauscale=<k>``: a finite number >= 0 (tau1 = 0.1 k, tau2 = 0.01 k)."""
  try:
    k = float(text)
  except ValueError:
    k = float("nan")
  if not k >= 0 or k == float("inf"):
    raise ValueError(f"configs/digits.py: variant tauscale={text!r}: expected a finite number >= 0")
  return k


def smoke(c):
  """Tiny networks of the same families, 2 pretrain and 2 DxMI iterations (tests, CPU)."""
  c.experiment += "_smoke"
  net = c.policy.net
  net.ch, net.ch_mult, net.num_res_blocks, net.attn_resolutions = 32, (1,), 1, ()
  c.value.nh = 8
  c.energy.nh = 8
  c.training.batch_size = 8
  c.training.num_iters = 2
  c.training.log_every = 1
  c.training.checkpoint_every = 2
  c.pretrain.num_iters = 2
  c.pretrain.batch_size = 8
  c.pretrain.warmup = 1
  c.sample.num = 16
  c.sample.batch_size = 8
  c.eval.fid_num_samples = 16
  c.training.eval_every = 0
