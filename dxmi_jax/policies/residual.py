"""The residual Gaussian policy of the official 2D toy trainer test.

mean = x + control(x, t), sigma_t = exp(log_sigma[t]) for every t (``trainable_beta=True``,
no fixed last step), network time input t / T.  With ``drift_units="sigma"`` the control is
measured in units of the step's own noise level, mean = x + sg[sigma_t] control(x, t) (no
gradient to sigma through the drift), so that the drift's scale follows the sigmas (e.g. set
relative to the data's spread) rather than the optimiser's absolute step on the weights.  This is the sampler recorded in
``dxmi_iteration_2d*.npz``; it is also a legitimate small policy for vector data.
The log-sigmas start at ``0.5 * log(eta[T-1-t])`` with the quadratic VAR eta.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax.policies.base import GaussianPolicy, bcast, gather_steps

DRIFT_UNITS = ("absolute", "sigma")


class ResidualPolicy(GaussianPolicy):
  """x_{t+1} = x_t + net(x_t, t) + exp(log_sigma[t]) * eps."""

  def __init__(self, net, num_steps: int, eta_data_side_first, drift_units: str = "absolute"):
    if drift_units not in DRIFT_UNITS:
      raise ValueError(f"config.policy.drift_units: expected one of {DRIFT_UNITS}, got {drift_units!r}")
    self.drift_units = drift_units
    self.net = net
    self.num_steps = int(num_steps)
    self.eta = np.asarray(eta_data_side_first, np.float64)
    if self.eta.shape != (self.num_steps,):
      raise ValueError(f"eta must have shape ({num_steps},), got {self.eta.shape}")

  def init_log_sigma(self):
    return (0.5 * np.log(self.eta[::-1])).astype(np.float32)

  def init_velocity_scale(self):
    # s_t = eta[T-1-t]: the official trainer's betas_for_q, read in sampling order.
    return self.eta[::-1].astype(np.float32)

  def net_time(self, t):
    return t  # the network divides by T itself (TimeMLP.time_scale = 1/T)

  def mean_and_sigma(self, params, x, t, y=None, *, train=False, rngs=None):
    control = self.apply_net(params, x, self.net_time(t), y, train=train, rngs=rngs).reshape(x.shape)
    sigma = jnp.exp(gather_steps(params["log_sigma"], t))
    if self.drift_units == "sigma":
      control = control * bcast(jnp.broadcast_to(jax.lax.stop_gradient(sigma), x.shape[:1]), x)
    mean = x + control
    return mean, sigma, jnp.log(sigma)

  def __repr__(self):
    return f"ResidualPolicy(T={self.num_steps}, drift_units={self.drift_units})"
