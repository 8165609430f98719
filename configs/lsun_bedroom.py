"""LSUN Bedroom 256, unconditional, EDM backbone, T=4 (official configs/lsun/T4.yaml).

The released config names a trainer (GCD_DiDP_NoTime) and a value network
(IGEBMEncoderV3) that are not in the official repository (reference §4.4, §5); we use
the ImageNet trainer semantics (DxMI_Trainer_Cond, which that trainer became) and the
IGEBMEncoderV2 value.  Global batch 64 (4 x 16 in the official run), RAdam 1e-8 /
log-sigmas 1e-6, all T minibatches, value clip 0.1.

    python main.py --config=configs/lsun_bedroom.py --workdir=... \
        --config.data.path=/data/lsun/bedroom_256 \
        --config.init.policy_checkpoint=pretrained/lsun_bedroom256_edm/edm_bedroom256_ema.pt

Variants: ``:smoke`` (tiny ADM UNet, synthetic 16x16 data, 2 iterations), ``:lowmem`` (the
memory options of ``imagenet64.lowmem``).
"""

from configs import cifar10, default, imagenet64
from dxmi_jax.models.adm_unet import adm_lsun256


def get_config(variant: str = ""):
  c = imagenet64.get_config()
  imagenet64.t4(c)
  c.experiment = "lsun_bedroom256_t4"
  c.data.name = "lsun"
  c.data.path = "datasets/lsun/bedroom_256"
  c.data.image_size = 256
  c.data.class_cond = False
  c.data.num_classes = 0
  # 256 ch, (1,1,2,2,4,4), 2 blocks, attn 32/16/8, no scale-shift; value/energy as ImageNet-64's
  c.policy.net = default.network("adm_unet", adm_lsun256(), dtype="bfloat16")
  c.training.batch_size = 64
  c.init.policy_checkpoint = "pretrained/lsun_bedroom256_edm/edm_bedroom256_ema.pt"
  c.sample.batch_size = 64
  for v in filter(None, variant.split(",")):
    if v == "smoke":
      cifar10.smoke(c, image_size=16)
    elif v == "lowmem":
      imagenet64.lowmem(c)
    else:
      raise ValueError(f"configs/lsun_bedroom.py: unknown variant {v!r}; expected smoke or lowmem")
  return c
