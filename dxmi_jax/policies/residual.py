"""The residual Gaussian policy of the official 2D toy trainer test.

mean = x + control(x, t), sigma_t = exp(log_sigma[t]) for every t (``trainable_beta=True``,
no fixed last step), network time input t / T.  This is the sampler recorded in
``dxmi_iteration_2d*.npz``; it is also a legitimate small policy for vector data.
The log-sigmas start at ``0.5 * log(eta[T-1-t])`` with the quadratic VAR eta.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from dxmi_jax.policies.base import GaussianPolicy, gather_steps


class ResidualPolicy(GaussianPolicy):
  """x_{t+1} = x_t + net(x_t, t) + exp(log_sigma[t]) * eps."""

  def __init__(self, net, num_steps: int, eta_data_side_first):
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
    control = self.apply_net(params, x, self.net_time(t), y, train=train, rngs=rngs)
    mean = x + control.reshape(x.shape)
    sigma = jnp.exp(gather_steps(params["log_sigma"], t))
    return mean, sigma, jnp.log(sigma)

  def __repr__(self):
    return f"ResidualPolicy(T={self.num_steps})"
