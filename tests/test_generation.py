"""Generation (generation.py): the cached, sharded generator; value-guided sampling, both signs, against a
closed-form value, and through the config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_image_experiment
from dxmi_jax import experiment, generation, parallel
from dxmi_jax.errors import ConfigError

CENTER = jnp.array([1.5, -0.5], jnp.float32)


def quadratic_value(params, x, t, y=None):
  """V(x, t) = 0.5 ||x - c||^2: grad V = x - c."""
  del t, y
  return 0.5 * jnp.sum(jnp.square(x - params), axis=-1)


def small_config(**over):
  from configs import gaussians2d  # pylint: disable=import-outside-toplevel

  c = gaussians2d.get_config("scratch")
  c.policy.net.hidden, c.value.hidden, c.training.batch_size = (16, 16), (16, 16), 8
  for key, value in over.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


@pytest.fixture(scope="module")
def one_step_policy():
  exp = experiment.build(small_config(policy__num_steps=1))
  state = exp.init_state(jax.random.PRNGKey(0))
  return exp.policy, state.policy.params


@pytest.mark.parametrize("sign, direction", [("descend", -1.0), ("official", 1.0)])
def test_one_guided_step_matches_closed_form(one_step_policy, sign, direction):
  policy, params = one_step_policy
  key, g, n = jax.random.PRNGKey(3), 0.3, 64
  plain = generation.generate(policy, params, key, n, (2,))
  guided = generation.generate(
    policy, params, key, n, (2,), value_apply=quadratic_value, value_params=CENTER, guidance_scale=g, guidance_sign=sign
  )
  # T = 1: x_1 = step(x_0) and the guidance moves it by direction * g * sigma_0 * (x_1 - c)
  sigma0 = _sigma0(policy, params, n)
  expected = plain + direction * g * sigma0[:, None] * (plain - CENTER)
  np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-6)
  v_plain, v_guided = (float(jnp.mean(quadratic_value(CENTER, x, None))) for x in (plain, guided))
  assert (v_guided < v_plain) if sign == "descend" else (v_guided > v_plain)


def _sigma0(policy, params, n):
  """The sigma the policy injects at t = 0 (read from one step, so no schedule is re-derived)."""
  x = jnp.zeros((n, 2), jnp.float32)
  return policy.step(params, x, jnp.zeros((n,), jnp.int32), jnp.zeros_like(x)).sigma


def test_zero_scale_is_plain_sampling(one_step_policy):
  policy, params = one_step_policy
  key = jax.random.PRNGKey(1)
  plain = generation.generate(policy, params, key, 8, (2,))
  zero = generation.generate(
    policy,
    params,
    key,
    8,
    (2,),
    value_apply=quadratic_value,
    value_params=CENTER,
    guidance_scale=0.0,
    guidance_sign="official",
  )
  np.testing.assert_array_equal(plain, zero)


def test_unknown_sign_is_a_config_error():
  with pytest.raises(ConfigError, match="config.sample.guidance_sign: expected one of"):
    experiment.build(small_config(sample__guidance_sign="up"))
  with pytest.raises(ValueError, match="guidance_sign"):
    generation.guidance_direction("up")


def test_generator_is_cached_and_sharded():
  exp = tiny_image_experiment()
  mesh = parallel.make_mesh()
  args = (exp.policy, exp.data_shape[1:], 8, mesh)
  kw = dict(value_apply=exp.nets.value_apply)
  gen = generation.make_generator(*args, **kw)
  assert generation.make_generator(*args, **kw) is gen
  assert generation.make_generator(exp.policy, exp.data_shape[1:], 16, mesh, **kw) is not gen
  state = jax.jit(exp.init_state)(jax.random.PRNGKey(0))
  x = gen(state.policy.params, jax.random.PRNGKey(1), None, state.value.params)
  assert x.shape == (8,) + tuple(exp.data_shape[1:])
  assert x.sharding.spec == jax.sharding.PartitionSpec("data")
