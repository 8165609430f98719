"""The CIFAR-10 policies on a DDPM epsilon network: VAR (ancestral), DDIM, DDPM-1000.

``VARPolicy`` is the official ``VARSampler`` (reference §3a) as a pure step
function: for sampling step t (t = 0 is noise)

    mean_t  = a_t x_t + b_t eps_theta(x_t, tau_t)
    x_{t+1} = mean_t + sigma~_t z

with a_t, b_t, tau_t from :func:`schedules.var_schedule`.  The mean always uses
the *schedule* sigma inside b_t; the trainable ``log_sigma`` only sets the
injected noise sigma~_t (reference §8 item 9):

* ``trainable_sigma="fix_last"`` (CIFAR configs): sigma~_t = exp(log_sigma[t])
  for t < T-1 and the fixed ``std[-1]`` = 0.001 at t = T-1 (official
  exp(log(0.001f)) = 0.0009999999); ``log_sigma[T-1]`` is dead;
* ``True``: sigma~_t = exp(log_sigma[t]) for every t;
* ``False``: the schedule ``std`` (last 0.001), ``log_sigma`` unused.

``sampler="ddim"`` swaps in the deterministic DDIM (eta = 0) coefficients on
the same Gamma_bar / tau and injects no noise.  ``DDPMAncestralPolicy`` is
Ho et al.'s 1000-step sampler for the "DDPM T=1000" baselines.

The networks are unconditional: class labels ``y`` are ignored, as the
official ``VARSampler.sample_step`` does not pass them on.
"""

from __future__ import annotations

from typing import Union

import jax.numpy as jnp
import numpy as np

from dxmi_jax.policies import schedules
from dxmi_jax.policies.base import GaussianPolicy, bcast, gather_steps, sigma_from_log

f32 = np.float32

#: floor of the entropy's log sigma where a sampler injects no noise (DDIM, the
#: last DDPM step), so that log sigma stays finite (the same floor as EDM's).
DETERMINISTIC_LOG_SIGMA_FLOOR = 1e-4

TRAINABLE_SIGMA_CHOICES = ("fix_last", True, False)


def check_trainable_sigma(trainable_sigma) -> Union[str, bool]:
  """Validates ``trainable_sigma`` (the official ``trainable_beta``)."""
  if isinstance(trainable_sigma, (bool, np.bool_)):
    return bool(trainable_sigma)
  if isinstance(trainable_sigma, str) and trainable_sigma == "fix_last":
    return "fix_last"
  raise ValueError(f"trainable_sigma must be one of 'fix_last', True, False; got {trainable_sigma!r}")


def trainable_mask(trainable_sigma, num_steps: int) -> np.ndarray:
  """bool (T,): which ``log_sigma`` entries set the noise (fix_last: all but the last)."""
  trainable_sigma = check_trainable_sigma(trainable_sigma)
  if trainable_sigma == "fix_last":
    return np.arange(num_steps) < num_steps - 1
  return np.full((num_steps,), bool(trainable_sigma))


class VARPolicy(GaussianPolicy):
  """The official ``VARSampler`` (``sampler="ancestral"``) or its DDIM variant.

  Args:
    net: Flax epsilon network called as ``net.apply(v, x, tau, deterministic=...)``.
    num_steps: T >= 1.
    trainable_sigma: "fix_last" | True | False (see the module docstring).
    sampler: "ancestral" (official, DDIM eta = 1) or "ddim" (eta = 0, no noise;
      needs ``trainable_sigma=False``).
    pin_last_tau: use the official last network time (``schedules.LAST_TAU_OFFICIAL``).
  """

  prior_std = 1.0

  def __init__(
    self, net, num_steps: int, trainable_sigma="fix_last", sampler: str = "ancestral", pin_last_tau: bool = True
  ):
    self.net = net
    self.schedule = schedules.var_schedule(num_steps, pin_last_tau=pin_last_tau)
    self.num_steps = self.schedule.num_steps
    self.trainable_sigma = check_trainable_sigma(trainable_sigma)
    if sampler not in ("ancestral", "ddim"):
      raise ValueError(f"sampler must be 'ancestral' or 'ddim', got {sampler!r}")
    self.sampler = sampler
    s = self.schedule
    if sampler == "ancestral":
      self._x_mult, self._eps_mult = s.x_mult, s.eps_mult
      # The noise when a step's log_sigma is not used: the official std buffer;
      # under fix_last the official code reads exp(log(std[-1])) (0.0009999999).
      fixed = s.std.copy()
      if self.trainable_sigma == "fix_last":
        fixed[-1] = np.exp(np.log(s.std[-1]))
      self._fixed_sigma = fixed
      self._log_sigma_init = s.log_sigma_init
    else:
      if self.trainable_sigma is not False:
        raise ValueError(f"the DDIM sampler is deterministic: it needs trainable_sigma=False, got {trainable_sigma!r}")
      self._x_mult, self._eps_mult = s.ddim_x_mult, s.ddim_eps_mult
      self._fixed_sigma = np.zeros((self.num_steps,), f32)
      self._log_sigma_init = np.full((self.num_steps,), np.log(f32(DETERMINISTIC_LOG_SIGMA_FLOOR)), f32)
    self._mask = trainable_mask(self.trainable_sigma, self.num_steps)

  # ------------------------------------------------------------------ init
  def init_log_sigma(self) -> np.ndarray:
    return np.array(self._log_sigma_init, f32)

  def init_velocity_scale(self) -> np.ndarray:
    """s_t = eta[T-1-t]: the official (reversed) betas_for_q read in sampling order."""
    return np.array(self.schedule.velocity_scale_init, f32)

  @property
  def trainable_log_sigma_mask(self) -> np.ndarray:
    return self._mask.copy()

  # ----------------------------------------------------------------- chain
  def net_time(self, t):
    """The continuous DDPM time tau_t of each sample's step."""
    return gather_steps(self.schedule.tau, t)

  def mean_and_sigma(self, params, x, t, y=None, *, train=False, rngs=None):
    del y  # unconditional epsilon network
    eps = self.apply_net(params, x, self.net_time(t), None, train=train, rngs=rngs)
    eps = eps.reshape(x.shape)
    a = bcast(gather_steps(self._x_mult, t), x)
    b = bcast(gather_steps(self._eps_mult, t), x)
    mean = a * x + b * eps
    sigma = sigma_from_log(params, t, self._mask, self._fixed_sigma)
    if self.sampler == "ddim":
      return mean, sigma, jnp.log(jnp.maximum(sigma, DETERMINISTIC_LOG_SIGMA_FLOOR))
    return mean, sigma, jnp.log(sigma)

  def __repr__(self):
    return f"VARPolicy(T={self.num_steps}, trainable_sigma={self.trainable_sigma!r}, sampler={self.sampler!r})"


class DDPMAncestralPolicy(GaussianPolicy):
  """Ho et al. ancestral sampling over the 1000 DDPM steps (sampling baseline).

  Step t denoises diffusion index k = 999 - t; the network time is k (float);
  the noise std is sqrt(beta_tilde_k) (posterior std, official ``Sigma``) and 0
  at the last step.  Nothing about the noise is trainable (``log_sigma`` is
  unused); the entropy's log sigma is floored at 1e-4.
  """

  prior_std = 1.0

  def __init__(self, net, num_steps: int = schedules.NUM_DIFFUSION_STEPS):
    if num_steps != schedules.NUM_DIFFUSION_STEPS:
      raise ValueError(
        f"the DDPM ancestral sampler runs all {schedules.NUM_DIFFUSION_STEPS} steps, got num_steps={num_steps!r}"
      )
    self.net = net
    self.schedule = schedules.ddpm_ancestral_schedule()
    self.num_steps = self.schedule.num_steps

  def init_log_sigma(self) -> np.ndarray:
    return np.log(np.maximum(self.schedule.sigma, f32(DETERMINISTIC_LOG_SIGMA_FLOOR))).astype(f32)

  def init_velocity_scale(self) -> np.ndarray:
    return np.array(self.schedule.velocity_scale_init, f32)

  @property
  def trainable_log_sigma_mask(self) -> np.ndarray:
    return np.zeros((self.num_steps,), bool)

  def net_time(self, t):
    return gather_steps(self.schedule.net_time, t)

  def mean_and_sigma(self, params, x, t, y=None, *, train=False, rngs=None):
    del y
    eps = self.apply_net(params, x, self.net_time(t), None, train=train, rngs=rngs).reshape(x.shape)
    mean = bcast(gather_steps(self.schedule.x_mult, t), x) * x + bcast(gather_steps(self.schedule.eps_mult, t), x) * eps
    sigma = gather_steps(self.schedule.sigma, t)
    return mean, sigma, jnp.log(jnp.maximum(sigma, DETERMINISTIC_LOG_SIGMA_FLOOR))

  def __repr__(self):
    return f"DDPMAncestralPolicy(T={self.num_steps})"
