"""The anomaly project's inputs: transforms, validation rows, diffused chain starts, the sphere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import anomaly_config_on
from dxmi_jax import experiment
from dxmi_jax.errors import ConfigError
from dxmi_jax.proj.anomaly import data as anomaly_data
from dxmi_jax.proj.anomaly import provider as provider_lib


def test_transforms_round_trip_through_checkpoint_json():
  x = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32) * 3 + 1
  for normalize in ("zscore", "sphere", "none"):
    t = anomaly_data.fit_transform(x, normalize)
    back = anomaly_data.transform_from_json(t.to_json())
    np.testing.assert_allclose(back(x), t(x), rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(anomaly_data.fit_transform(x, "sphere")(x), axis=-1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="config.data.normalize"):
    anomaly_data.fit_transform(x, "minmax")


@pytest.mark.parametrize("sphere", [True, False])
def test_diffusion_of_starts(sphere):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2000, 30)).astype(np.float32)
  if sphere:
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
  out = anomaly_data.diffuse(x, 0.05, 10, sphere, np.random.default_rng(1))
  if sphere:  # every move stays on the sphere, and the walk moves each point
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
  d = np.sqrt(np.mean((out - x) ** 2))
  assert 0.03 < d < 0.07, d  # about noise_std per coordinate
  np.testing.assert_array_equal(anomaly_data.diffuse(x, 0.0, 10, sphere, rng), x)


def test_provider_starts_scale_and_validation_rows(tmp_path):
  c = anomaly_config_on(tmp_path, "smoke", rows=300)
  exp = experiment.build(c)
  data = exp.data
  assert data.val.shape == (30, 6) and data.data.points.shape == (270, 6)
  assert abs(data.scale - 1.0) < 0.05  # z-scored rows
  b1, b2 = data.local_batch(3), data.local_batch(3)
  np.testing.assert_array_equal(b1["x0"], b2["x0"])  # a function of (seed, step)
  assert b1["x0"].shape == b1["x"].shape and not np.array_equal(b1["x0"], data.local_batch(4)["x0"])
  # the starts are training rows moved by about start_noise x scale per coordinate
  starts = data.starts(0, 2000)
  nn = np.sqrt(((starts[:, None] - data.data.points[None]) ** 2).mean(-1)).min(1)
  assert 0.5 < np.median(nn) < 1.2, np.median(nn)
  c.data.start = "prior"
  assert "x0" not in experiment.build(c).data.local_batch(0)


def test_relative_scales_set_sigmas_avr_and_energy_scale(tmp_path):
  c = anomaly_config_on(tmp_path, "sphere,smoke", rows=300)
  exp = experiment.build(c)
  scale = exp.data.scale
  assert 0 < scale < 0.5  # unit-sphere rows spread far less than z-scored ones
  state = provider_lib.with_relative_scales(exp, exp.init_state(jax.random.PRNGKey(0)), exp.data)
  np.testing.assert_allclose(np.exp(state.policy.params["log_sigma"]), c.policy.init_sigma * scale, rtol=1e-5)
  np.testing.assert_allclose(state.velocity_scale, c.policy.init_sigma * scale, rtol=1e-5)
  # the energy's scale puts the mean energy of chain starts at 1 / (2 gamma)
  starts = jnp.asarray(exp.data.starts(0, provider_lib._SCALE_ROWS, tag=2))
  e = exp.nets.energy_apply(state.energy.params, starts, None)
  np.testing.assert_allclose(float(jnp.mean(e)), 0.5 / c.dxmi.gamma, rtol=1e-4)


def test_sphere_policy_steps_stay_on_the_sphere(tmp_path):
  c = anomaly_config_on(tmp_path, "sphere,smoke", rows=100)
  exp = experiment.build(c)
  state = exp.init_state(jax.random.PRNGKey(0))
  x0 = jnp.asarray(exp.data.local_batch(0)["x0"])
  out = exp.policy.step(state.policy.params, x0, 0, jax.random.normal(jax.random.PRNGKey(1), x0.shape))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out.sample), axis=-1), 1.0, rtol=1e-5)
  # and the Euclidean policy does not project
  c.policy.manifold, c.data.normalize = "euclidean", "zscore"
  exp = experiment.build(c)
  out = exp.policy.step(exp.init_state(jax.random.PRNGKey(0)).policy.params, x0 * 3, 0, jnp.zeros_like(x0))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out.sample), axis=-1), 3.0, rtol=1e-5)


def test_sphere_inputs_need_a_sphere_policy(tmp_path):
  c = anomaly_config_on(tmp_path, "smoke", rows=50)
  c.data.normalize = "sphere"
  with pytest.raises(ConfigError, match="config.policy.manifold"):
    experiment.build(c)
