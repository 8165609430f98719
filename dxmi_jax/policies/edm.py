"""The ImageNet-64 / LSUN policy: EDM (Karras) ancestral sampler on a raw ADM UNet.

The official ``OpenAIDiffusion`` (reference §3b) as a pure step function.
For sampling step t (t = 0 is noise, x_0 ~ N(0, sigma_max^2 I)):

    D       = c_skip x + c_out F(c_in x, c_noise, y)        (sigma = sigma_t, sigma_data = 0.5)
    mean_t  = x + (x - D) / sigma_t * (sigma_down_t - sigma_t)   (Euler step to sigma_down)
    x_{t+1} = mean_t + sigma~_t z

``net`` is the raw UNet F; the policy applies the preconditioning through
``dxmi_jax.models.adm_unet.edm_denoise``.  The mean uses the fixed sigma_down;
the trainable ``log_sigma`` sets only the injected noise sigma~:

* ``trainable_sigma="fix_last"`` (official configs): exp(log_sigma[t]) for
  t < T-1 and the schedule sigma_up[T-1] at the last step (0 for
  ``stochastic_last=False``, ~sigma_min otherwise);
* ``True``: exp(log_sigma[t]) everywhere; ``False``: sigma_up everywhere.

The entropy's sigma is clamped at >= 1e-4 (official ``sigma_up.clamp(1e-4)``),
so a deterministic last step has the constant log sigma = log 1e-4.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from dxmi_jax.models.adm_unet import edm_denoise, karras_scalings
from dxmi_jax.policies import schedules
from dxmi_jax.policies.base import GaussianPolicy, bcast, gather_steps, sigma_from_log
from dxmi_jax.policies.var import check_trainable_sigma, trainable_mask

#: the official lower clamp of the returned sigma (used for the entropy)
ENTROPY_SIGMA_FLOOR = 1e-4


class EDMPolicy(GaussianPolicy):
  """Ancestral Karras sampler (official ``OpenAIDiffusion`` + ``KarrasDenoiser``).

  Args:
    net: the raw ADM UNet F, called as ``net.apply(v, u, c_noise, y=y, deterministic=...)``.
    num_steps: T >= 1.
    sigma_min, sigma_max, rho: Karras schedule (prior std = sigma_max).
    stochastic_last: the last step lands at sigma_min with noise (True) or at 0.
    trainable_sigma: "fix_last" | True | False.
    sigma_data: EDM preconditioning constant.
  """

  def __init__(
    self,
    net,
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    stochastic_last: bool = False,
    trainable_sigma="fix_last",
    sigma_data: float = 0.5,
  ):
    if not sigma_data > 0:
      raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
    self.net = net
    self.schedule = schedules.karras_schedule(
      num_steps, float(sigma_min), float(sigma_max), float(rho), bool(stochastic_last)
    )
    self.num_steps = self.schedule.num_steps
    self.prior_std = float(sigma_max)
    self.sigma_data = float(sigma_data)
    self.trainable_sigma = check_trainable_sigma(trainable_sigma)
    self._mask = trainable_mask(self.trainable_sigma, self.num_steps)
    self._sigma_t = np.array(self.schedule.sigmas[:-1])  # level at the start of step t

  # ------------------------------------------------------------------ init
  def init_log_sigma(self) -> np.ndarray:
    """log(max(sigma_up, 1e-3)) (the last entry is dead under fix_last)."""
    return np.array(self.schedule.log_sigma_init, np.float32)

  def init_velocity_scale(self) -> np.ndarray:
    """s_t = sigma_t^2 (the noise *level*, DxMI_Trainer_Cond order = sampling order)."""
    return np.array(self.schedule.velocity_scale_init, np.float32)

  @property
  def trainable_log_sigma_mask(self) -> np.ndarray:
    return self._mask.copy()

  # ----------------------------------------------------------------- chain
  def noise_level(self, t):
    """sigma_t (B,) of each sample's step."""
    return gather_steps(self._sigma_t, t)

  def net_time(self, t):
    """The UNet's time input c_noise = 250 log(sigma_t)."""
    return karras_scalings(self.noise_level(t), self.sigma_data)[3]

  def denoise(self, params, x, t, y=None, *, train=False, rngs=None):
    """D(x; sigma_t, y) with the policy's network."""

    def unet_apply(u, c_noise, yy):
      return self.apply_net(params, u, c_noise, yy, train=train, rngs=rngs).reshape(u.shape)

    return edm_denoise(unet_apply, x, self.noise_level(t), y, sigma_data=self.sigma_data)

  def mean_and_sigma(self, params, x, t, y=None, *, train=False, rngs=None):
    sigma_t = self.noise_level(t)
    denoised = self.denoise(params, x, t, y, train=train, rngs=rngs)
    d = (x - denoised) / bcast(sigma_t, x)
    dt = gather_steps(self.schedule.sigma_down, t) - sigma_t
    mean = x + d * bcast(dt, x)
    sigma = sigma_from_log(params, t, self._mask, self.schedule.sigma_up)
    return mean, sigma, jnp.log(jnp.maximum(sigma, ENTROPY_SIGMA_FLOOR))

  def __repr__(self):
    s = self.schedule
    return (
      f"EDMPolicy(T={self.num_steps}, sigma=[{s.sigma_min}, {s.sigma_max}], rho={s.rho}, "
      f"stochastic_last={s.stochastic_last}, trainable_sigma={self.trainable_sigma!r})"
    )
