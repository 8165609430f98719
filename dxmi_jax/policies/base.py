"""The contract every DxMI policy (T-step Gaussian sampler) follows.

A policy is the Markov chain pi(x_{t+1} | x_t) = N(mu_theta(x_t, t), sigma_t^2 I),
t = 0..T-1, with x_0 drawn from the prior and x_T the generated sample.  Here
*t = 0 is noise and t = T is data*, the trainers' convention (reference §1.1).

A policy object is a plain, hashable Python object (it is closed over by jitted
functions, never traced).  Its trainable parameters are a dict

    {"net": <flax params of the mean network>, "log_sigma": float32[T]}

``log_sigma`` are log standard deviations of the injected noise (the official
``log_betas``).  Under ``fix_last`` the last entry exists but is never used.

Everything is per sample: ``t`` is an int32 vector with one timestep per sample,
so minibatches may mix timesteps (reference §8 item 26).
"""

from __future__ import annotations

import abc
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = Any


@flax.struct.dataclass
class StepOut:
  """One transition x_t -> x_{t+1} of the policy.

  sample:     x_{t+1} = mean + sigma * noise, shape of x (on the sphere manifold: projected
              onto the unit sphere, a reparameterised step all the same).
  mean:       mu_theta(x_t, t), shape of x.
  sigma:      (B,) std of the noise actually injected.
  log_sigma:  (B,) log of the sigma used for the entropy term (EDM clamps it
              at 1e-4 first; for the other policies it is log(sigma)).
  """

  sample: Array
  mean: Array
  sigma: Array
  log_sigma: Array


def gather_steps(table, t):
  """Per-sample lookup ``table[t]`` of a length-T schedule (t: int (B,))."""
  return jnp.take(jnp.asarray(table), t, axis=0)


def bcast(v, x):
  """Broadcast a per-sample (B,) vector against x of shape (B, ...)."""
  return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


class GaussianPolicy(abc.ABC):
  """Abstract T-step Gaussian policy.  Subclasses fill in the mean and sigma."""

  #: number of sampling steps T
  num_steps: int
  #: the Flax module computing the network part of the mean
  net: Any
  #: std of the prior x_0 ~ N(0, prior_std^2 I)
  prior_std: float = 1.0
  #: where the chain lives: "euclidean", or "sphere" (every state projected onto the unit
  #: sphere: x / |x| over the non-batch axes; ``config.policy.manifold``)
  manifold: str = "euclidean"

  # ------------------------------------------------------------------ init
  @abc.abstractmethod
  def init_log_sigma(self) -> np.ndarray:
    """float32 (T,) initial log standard deviations (the ``log_betas``)."""

  @abc.abstractmethod
  def init_velocity_scale(self) -> np.ndarray:
    """float32 (T,) initial AVR velocity scales s_t, in *sampling order*.

    Index t is transition t (x_t -> x_{t+1}).  The official DxMI_Trainer
    stores this reversed; we always store it in sampling order and read it at
    t (reference §2b, §8 item 2).
    """

  def init_params(self, rng, x, y=None) -> Params:
    """Initialise {"net", "log_sigma"} for inputs shaped like x (B, ...)."""
    t = jnp.zeros((x.shape[0],), jnp.int32)
    net_params = self.net.init(rng, x, self.net_time(t), y=y)["params"]
    return {"net": net_params, "log_sigma": jnp.asarray(self.init_log_sigma())}

  @property
  def trainable_log_sigma_mask(self) -> np.ndarray:
    """bool (T,): which log_sigma entries the policy ever uses (fix_last: not the last)."""
    return np.ones((self.num_steps,), bool)

  # ----------------------------------------------------------------- chain
  def prior(self, rng, shape) -> Array:
    return self.project(self.prior_std * jax.random.normal(rng, shape, jnp.float32))

  def project(self, x) -> Array:
    """A state onto the policy's manifold (identity in Euclidean space)."""
    if self.manifold != "sphere":
      return x
    norm = jnp.sqrt(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=-1))
    return x / bcast(jnp.maximum(norm, 1e-12), x)

  def net_time(self, t) -> Array:
    """What the network receives as its time input for integer step t."""
    return t.astype(jnp.float32)

  @abc.abstractmethod
  def mean_and_sigma(self, params, x, t, y=None, *, train=False, rngs=None):
    """Returns (mean, sigma (B,), log_sigma_for_entropy (B,))."""

  def step(self, params, x, t, noise, y=None, *, train=False, rngs=None) -> StepOut:
    """x_{t+1} = mu(x_t, t) + sigma_t * noise, with the caller's noise.

    ``t``: int (B,) per-sample steps, or a scalar when every sample is at the same step
    (a rollout or sampling step).  A scalar reaches the network as a time input of shape
    (1,), one time for the whole batch, so that it embeds it once (``apply_net``).
    ``train`` switches the network to training mode (dropout on); ``rngs`` then
    carries its rng streams, e.g. {"dropout": key}.
    """
    batch = (x.shape[0],)
    t = jnp.asarray(t, jnp.int32)
    t = t.reshape(1) if t.ndim == 0 else jnp.broadcast_to(t, batch)
    mean, sigma, log_sigma = self.mean_and_sigma(params, x, t, y, train=train, rngs=rngs)
    sigma, log_sigma = jnp.broadcast_to(sigma, batch), jnp.broadcast_to(log_sigma, batch)
    sample = self.project(mean + bcast(sigma, mean) * noise)
    return StepOut(sample=sample, mean=mean, sigma=sigma, log_sigma=log_sigma)

  def apply_net(self, params, x, t_net, y=None, *, train=False, rngs=None):
    """Calls the Flax network with the conventions all our networks share.

    ``net(x, t_net, y=None, deterministic=...)`` with x (B, ...) and the time input t_net
    of shape (B,), or (1,) when the whole batch is at one time (broadcast it against x).
    """
    kwargs = {}
    if y is not None:
      kwargs["y"] = y
    return self.net.apply({"params": params["net"]}, x, t_net, deterministic=not train, rngs=rngs or {}, **kwargs)


def sigma_from_log(params, t, trainable_mask, fixed_sigma):
  """exp(log_sigma[t]) where trainable, else the fixed schedule value (fix_last)."""
  mask = gather_steps(np.asarray(trainable_mask), t)
  learned = jnp.exp(gather_steps(params["log_sigma"], t))
  return jnp.where(mask, learned, gather_steps(np.asarray(fixed_sigma, np.float32), t))
