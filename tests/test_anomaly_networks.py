"""The autoencoder energy (``ae_energy``) and its reconstruction pretraining."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import anomaly_config_on
from dxmi_jax import experiment
from dxmi_jax.proj.anomaly import pretrain_ae, synthetic
from dxmi_jax.proj.anomaly.networks import AEEnergy


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("normalize", [True, False])
def test_ae_energy_shapes_normalisation_and_scale(normalize):
  net = AEEnergy(hidden=(64, 32), latent=4, normalize=normalize, temperature=0.5)
  x = _unit(np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32))
  params = net.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
  assert params["enc_2"]["kernel"].shape == (32, 4) and params["dec_out"]["kernel"].shape == (64, 12)
  e = net.apply({"params": params}, x)
  x_hat = np.asarray(net.apply({"params": params}, x, method=AEEnergy.reconstruct))
  assert e.shape == (5, 1) and x_hat.shape == (5, 12)
  norms = np.linalg.norm(x_hat, axis=-1)
  if normalize:
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
  else:
    assert not np.allclose(norms, 1.0, rtol=1e-2)
  # E = s^2 mean_d (x - x_hat)^2 / temperature, with the learnt scale s
  err = np.mean((x - x_hat) ** 2, -1)
  np.testing.assert_allclose(np.asarray(e)[:, 0], err / 0.5, rtol=1e-5)
  params = dict(params, scale=jnp.float32(3.0))
  np.testing.assert_allclose(np.asarray(net.apply({"params": params}, x))[:, 0], 9.0 * err / 0.5, rtol=1e-5)
  # the time input of the energy interface is ignored
  np.testing.assert_array_equal(net.apply({"params": params}, x, jnp.full((5,), 3)), net.apply({"params": params}, x))


def test_ae_latent_auto_is_half_the_input():
  net = AEEnergy(hidden=(8,), latent=0, normalize=False)
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((2, 10)))["params"]
  assert params["enc_1"]["kernel"].shape == (8, 5)


def test_reconstruction_pretraining_lowers_the_error_of_held_out_normals():
  x, _ = synthetic.vectors(700, 0, 8, seed=0)
  x = (x - x.mean(0)) / x.std(0)
  train, held = x[:600], x[600:]
  net = AEEnergy(hidden=(32, 32), latent=3, normalize=False, temperature=1.0)
  params = net.init(jax.random.PRNGKey(0), jnp.asarray(train[:2]))["params"]
  err = lambda p: float(np.mean(net.apply({"params": p}, held, method=AEEnergy.recon_error)))
  rng = np.random.default_rng(0)
  trained, losses = pretrain_ae.pretrain_params(net, params, lambda i: train[rng.integers(0, 600, 64)], 300, 1e-3)
  assert losses.shape == (300,) and losses[-20:].mean() < 0.3 * losses[:20].mean()
  assert err(trained) < 0.3 * err(params), (err(params), err(trained))


def test_anomaly_config_builds_its_energy(tmp_path):
  c = anomaly_config_on(tmp_path, "smoke", rows=50)
  exp = experiment.build(c)
  assert isinstance(exp.energy_module, AEEnergy) and exp.policy.manifold == "euclidean"
  c = anomaly_config_on(tmp_path, "sphere,smoke", rows=50)
  exp = experiment.build(c)
  assert exp.energy_module.normalize and exp.policy.manifold == "sphere"
