"""The CIFAR-10 T=4 policy: DDGAN's posterior sampler around its NCSN++ generator.

Denoising Diffusion GAN (Xiao et al., ICLR 2022) samples in T (= 4) steps.  At
diffusion index i = T-1 .. 0 it predicts x̂_0 = G(x_i, i, z) with a fresh latent z and
draws x from DDPM's posterior q(x_{i-1} | x_i, x_0 = x̂_0).  In our convention (t = 0
is noise, step t maps diffusion index i = T-1-t):

    x̂_0     = G(x_t, i, z),                      z ~ N(0, I_nz)
    mean_t  = c1[i] x̂_0 + c2[i] x_t              (posterior mean coefficients)
    x_{t+1} = mean_t + sigma~_t eps

with DDGAN's variance-preserving discretisation (beta_min 0.1, beta_max 20,
``ddgan_schedule``).  The schedule sigma is the posterior std sqrt(beta~_i), and 0
at the last step (DDGAN's ``nonzero_mask``).

What DxMI adds, and what had to be inferred.  DxMI's ``models.ddgan.DDGANSampler``
(``use_z: True``, ``trainable_beta: fix_last``) is referenced by its CIFAR-10 T=4 config
but not released (reference §4.5).  We follow the released samplers (VAR, EDM) where
DDGAN leaves a choice, and mark each such choice [inferred]:

* [inferred] trainable ``log_sigma`` sets only the injected noise; the mean keeps the
  schedule's posterior coefficients (as VAR and EDM keep theirs);
* [inferred] ``log_sigma`` starts at log of the schedule sigma; under ``fix_last`` the
  last step keeps DDGAN's zero noise and its (dead) entry starts at log 1e-4;
* [inferred] the entropy is log max(sigma~, 1e-4), the floor of the EDM sampler, so
  that the deterministic last step has a finite constant entropy;
* [inferred] the AVR velocity scales start at the forward betas beta_i of each step
  (VAR starts at its betas too); AVR adapts them from the first iteration;
* ``use_z``: a fresh z at every step, as DDGAN's ``sample_from_model``.

Where z comes from.  DxMI's functions hand a policy one data-shaped noise tensor per
step (``dxmi.StepNoise``, ``generation.generate``), and a rollout must be a pure function
of that noise.  The policy therefore derives z from the step's noise: each sample's
noise is hashed into a PRNG key (``latent_from_noise``: the float32 bits, XOR-folded
to two 32-bit words, form a threefry key) from which z ~ N(0, I) is drawn.  The
same noise always gives the same z, different noise gives unrelated z, and z is
statistically independent of the Gaussian noise that it is hashed from.  Nothing
in ``dxmi.py`` or ``generation.py`` needs to know about z.  Tests and DDGAN parity
pass an explicit ``z=`` to ``step`` instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax.policies.base import GaussianPolicy, StepOut, bcast, gather_steps, sigma_from_log
from dxmi_jax.policies.var import check_trainable_sigma, trainable_mask

f32 = np.float32

#: entropy floor of the noise-free last step (the EDM sampler's clamp)
ENTROPY_SIGMA_FLOOR = 1e-4
#: tag folded into every latent key, so that z never reuses the key of another draw
_LATENT_TAG = 0x44474E  # "DGN"


def ddgan_schedule(num_steps: int, beta_min: float = 0.1, beta_max: float = 20.0) -> dict:
  """DDGAN's VP discretisation and posterior coefficients, indexed by diffusion index i.

  DDGAN (``get_sigma_schedule``, ``Posterior_Coefficients``): t_k = k/T (1 - 1e-3) + 1e-3
  for k = 0..T in float64, alpha_bar = exp(-t^2 (b_max - b_min)/2 - t b_min), betas =
  1 - alpha_bar_k / alpha_bar_{k-1} cast to float32; then, in float32, the DDPM
  posterior of x_{i-1} given (x_i, x_0) for i = 0..T-1 (i = 0: alpha_bar_prev = 1).
  """
  n = int(num_steps)
  if n < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps!r}")
  if not 0 < beta_min < beta_max:
    raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}")
  t = np.arange(0, n + 1, dtype=np.float64) / n * (1.0 - 1e-3) + 1e-3
  log_mean = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
  alpha_bars = 1.0 - (1.0 - np.exp(2.0 * log_mean))
  betas = (1.0 - alpha_bars[1:] / alpha_bars[:-1]).astype(f32)
  alphas = (f32(1) - betas).astype(f32)
  ac = np.cumprod(alphas, dtype=f32)
  ac_prev = np.concatenate([np.ones((1,), f32), ac[:-1]]).astype(f32)
  one = f32(1)
  var = (betas * (one - ac_prev) / (one - ac)).astype(f32)
  return {
    "betas": betas,
    "alphas_cumprod": ac,
    "alphas_cumprod_prev": ac_prev,
    "posterior_variance": var,
    "posterior_mean_coef1": (betas * np.sqrt(ac_prev) / (one - ac)).astype(f32),
    "posterior_mean_coef2": ((one - ac_prev) * np.sqrt(alphas) / (one - ac)).astype(f32),
    "posterior_log_variance_clipped": np.log(np.maximum(var, f32(1e-20))).astype(f32),
  }


def latent_from_noise(noise, nz: int):
  """z (B, nz) ~ N(0, I), a deterministic per-sample hash of the step noise (B, ...)."""
  bits = jax.lax.bitcast_convert_type(noise.reshape(noise.shape[0], -1).astype(jnp.float32), jnp.uint32)
  if bits.shape[1] % 2:
    bits = jnp.pad(bits, ((0, 0), (0, 1)))
  words = bits.reshape(bits.shape[0], -1, 2)
  words = jax.lax.reduce(words, np.uint32(0), jax.lax.bitwise_xor, (1,))  # (B, 2)

  def one(w):
    key = jax.random.fold_in(jax.random.wrap_key_data(w, impl="threefry2x32"), _LATENT_TAG)
    return jax.random.normal(key, (nz,), jnp.float32)

  return jax.vmap(one)(words)


class DDGANPolicy(GaussianPolicy):
  """DDGAN's T-step posterior sampler (see the module docstring).

  Args:
    net: a ``DDGANGenerator`` (called as ``net.apply(v, x, i, z=z, deterministic=...)``).
    num_steps: T >= 1 (the generator's ``num_timesteps``; CIFAR-10 exp1: 4).
    trainable_sigma: "fix_last" | True | False.
    beta_min, beta_max: DDGAN's VP schedule (0.1, 20).
  """

  prior_std = 1.0

  def __init__(self, net, num_steps: int, trainable_sigma="fix_last", beta_min: float = 0.1, beta_max: float = 20.0):
    self.net = net
    self.num_steps = int(num_steps)
    self.beta_min, self.beta_max = float(beta_min), float(beta_max)
    self.nz = int(getattr(net, "nz", 0))
    if self.nz < 1:
      raise ValueError(f"DDGANPolicy needs a generator with a latent size nz >= 1, got {net!r}")
    self.trainable_sigma = check_trainable_sigma(trainable_sigma)
    self.coefficients = ddgan_schedule(self.num_steps, self.beta_min, self.beta_max)
    c = self.coefficients
    # Tables in sampling order t (diffusion index i = T-1-t).
    order = np.arange(self.num_steps)[::-1]
    self._index = order.astype(np.int32)
    self._coef1 = c["posterior_mean_coef1"][order]
    self._coef2 = c["posterior_mean_coef2"][order]
    half_log_var = (f32(0.5) * c["posterior_log_variance_clipped"][order]).astype(f32)
    noisy = self._index > 0  # DDGAN's nonzero_mask
    self.schedule_sigma = np.where(noisy, np.exp(half_log_var), 0).astype(f32)
    self._log_sigma_init = np.where(noisy, half_log_var, np.log(f32(ENTROPY_SIGMA_FLOOR))).astype(f32)
    self._velocity_init = c["betas"][order].astype(f32)
    self._mask = trainable_mask(self.trainable_sigma, self.num_steps)

  # ------------------------------------------------------------------ init
  def init_log_sigma(self) -> np.ndarray:
    return np.array(self._log_sigma_init, f32)

  def init_velocity_scale(self) -> np.ndarray:
    return np.array(self._velocity_init, f32)

  @property
  def trainable_log_sigma_mask(self) -> np.ndarray:
    return self._mask.copy()

  def init_params(self, rng, x, y=None):
    del y
    t = jnp.zeros((x.shape[0],), jnp.int32)
    z = jnp.zeros((x.shape[0], self.nz), jnp.float32)
    net_params = self.net.init(rng, x, self.net_time(t), z=z)["params"]
    return {"net": net_params, "log_sigma": jnp.asarray(self.init_log_sigma())}

  # ----------------------------------------------------------------- chain
  def net_time(self, t):
    """DDGAN's generator time: the diffusion index i = T-1-t (float)."""
    return gather_steps(self._index, t).astype(jnp.float32)

  def latent(self, noise):
    return latent_from_noise(noise, self.nz)

  def predict_x0(self, params, x, t, z, *, train=False, rngs=None):
    """x̂_0 = G(x_t, i, z) (NHWC)."""
    return self.net.apply(
      {"params": params["net"]}, x, self.net_time(t), z=z, deterministic=not train, rngs=rngs or {}
    ).reshape(x.shape)

  def mean_and_sigma(self, params, x, t, y=None, *, z=None, train=False, rngs=None):
    del y  # unconditional generator
    if z is None:
      raise ValueError("DDGANPolicy.mean_and_sigma needs the latent z; step() derives it from the noise")
    x0 = self.predict_x0(params, x, t, z, train=train, rngs=rngs)
    mean = bcast(gather_steps(self._coef1, t), x) * x0 + bcast(gather_steps(self._coef2, t), x) * x
    sigma = sigma_from_log(params, t, self._mask, self.schedule_sigma)
    return mean, sigma, jnp.log(jnp.maximum(sigma, ENTROPY_SIGMA_FLOOR))

  def step(self, params, x, t, noise, y=None, *, train=False, rngs=None, z=None):
    """x_{t+1} = mean(x_t, z) + sigma~_t noise; z = ``latent(noise)`` unless given."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    z = self.latent(noise) if z is None else z
    mean, sigma, log_sigma = self.mean_and_sigma(params, x, t, y, z=z, train=train, rngs=rngs)
    return StepOut(sample=mean + bcast(sigma, mean) * noise, mean=mean, sigma=sigma, log_sigma=log_sigma)

  def __repr__(self):
    return (
      f"DDGANPolicy(T={self.num_steps}, nz={self.nz}, beta=[{self.beta_min}, {self.beta_max}], "
      f"trainable_sigma={self.trainable_sigma!r})"
    )
