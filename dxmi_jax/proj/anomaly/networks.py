"""Energy networks of the anomaly-detection experiments (the EV trainer's energy f).

* ``ae_energy``: the authors' autoencoder energy (MPDR / value-gradient-sampler line of work):
  encoder D -> hidden... -> latent, decoder latent -> ...hidden -> D (ReLU MLPs), and
      E(x) = s^2 * mean_d (x - x_hat)^2 / temperature
  with a learnt scale s (starting at 1).  ``normalize=True`` (unit-sphere inputs) puts the
  latent and the reconstruction on the unit sphere; for z-scored tables use
  ``normalize=False`` with a latent smaller than D (wider, it could learn the identity);
  ``latent <= 0`` means D // 2.
  The mean over coordinates keeps E at O(1) whatever D is.  ``reconstruct`` gives x_hat,
  ``recon_error`` the unscaled mean_d (x - x_hat)^2 that the pretraining minimises.

* ``energy_mlp``: f(x) = MLP(x) for vector features, with **no time input** (the EV trainer's
  energy sees only x; its dummy time argument is ignored).  The same network is the energy of
  the MCMC-trained EBM baseline, so the two detectors differ only in how they were trained.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from dxmi_jax.models import registry


class EnergyMLP(nn.Module):
  """``Dense -> SiLU -> ... -> Dense(1)`` on x; the time input is accepted and ignored."""

  hidden: Sequence[int] = (128, 128)
  out_dim: int = 1
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x, t=None, y=None, deterministic=True):
    del t, y, deterministic
    b = x.shape[0]
    h = x.reshape(b, -1).astype(jnp.float32)
    for i, width in enumerate(self.hidden):
      h = nn.silu(nn.Dense(width, name=f"dense_{i}")(h))
    return nn.Dense(self.out_dim, name=f"dense_{len(self.hidden)}")(h).reshape(b, self.out_dim)


def _unit(h):
  return h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)


class AEEnergy(nn.Module):
  """The autoencoder energy (module docstring); the time input is accepted and ignored."""

  hidden: Sequence[int] = (256, 256, 256)
  latent: int = 128
  normalize: bool = True
  temperature: float = 0.1
  learn_scale: bool = True
  dtype: str = "float32"

  @nn.compact
  def _forward(self, x):
    """(x_hat (B, D), the scale s) for x (B, ...) flattened."""
    h = x.reshape(x.shape[0], -1).astype(jnp.float32)
    d = h.shape[-1]
    widths = tuple(self.hidden) + (self.latent if self.latent > 0 else max(1, d // 2),)
    for i, w in enumerate(widths):
      h = nn.Dense(w, name=f"enc_{i}")(h)
      if i < len(widths) - 1:
        h = nn.relu(h)
    if self.normalize:
      h = _unit(h)
    for i, w in enumerate(tuple(self.hidden)[::-1]):
      h = nn.relu(nn.Dense(w, name=f"dec_{i}")(h))
    h = nn.Dense(d, name="dec_out")(h)
    scale = self.param("scale", nn.initializers.ones_init(), (), jnp.float32) if self.learn_scale else 1.0
    return (_unit(h) if self.normalize else h), scale

  def reconstruct(self, x):
    return self._forward(x)[0]

  def recon_error(self, x):
    """mean_d (x - x_hat)^2 per row, without the scale and temperature."""
    return jnp.mean(jnp.square(x.reshape(x.shape[0], -1).astype(jnp.float32) - self._forward(x)[0]), axis=-1)

  def __call__(self, x, t=None, y=None, deterministic=True):
    del t, y, deterministic
    x_hat, scale = self._forward(x)
    err = jnp.mean(jnp.square(x.reshape(x.shape[0], -1).astype(jnp.float32) - x_hat), axis=-1)
    return (jnp.square(scale) * err / self.temperature).reshape(x.shape[0], 1)


def _energy_mlp_config():
  c = ml_collections.ConfigDict()
  c.hidden = (128, 128)
  c.out_dim = 1
  c.dtype = "float32"
  return c


def _ae_energy_config():
  c = ml_collections.ConfigDict()
  c.hidden = (256, 256, 256)
  c.latent = 128
  c.normalize = True
  c.temperature = 0.1
  c.learn_scale = True
  c.dtype = "float32"
  return c


def _vector_inputs(cfg, batch):
  del cfg
  return jnp.zeros((batch, 2), jnp.float32), jnp.zeros((batch,), jnp.float32), None


registry.register("energy_mlp", EnergyMLP, _energy_mlp_config, _vector_inputs)
registry.register("ae_energy", AEEnergy, _ae_energy_config, _vector_inputs)
