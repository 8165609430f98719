"""models/conv.py: the loop-safe convolution equals XLA's, and keeps every convolution canonical.

The speed itself is measured in benchmarks/step_time.py; here we check what makes it:
inside a ``lax.scan`` the compiled gradient contains only NHWC/HWIO->NHWC convolutions,
the form XLA:CPU runs through its fast kernel.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dxmi_jax.errors import ConfigError
from dxmi_jax.models import conv

# (H, C_in, C_out, kernel, stride, padding): same-padded, strided (the DDPM downsample),
# smaller than the kernel (the IGEBM 2x2 and 1x1 stages), 1x1, VALID
SHAPES = [
  (8, 4, 5, 3, 1, 1),
  (9, 4, 5, 3, 2, 0),
  (2, 4, 5, 3, 1, 1),
  (1, 4, 3, 3, 1, 1),
  (4, 6, 3, 1, 1, 0),
  (5, 2, 3, 3, 1, 0),
]


@pytest.fixture
def mode():
  yield conv.set_mode
  conv.set_mode("auto")


def _loss(mode_name, s, p):
  def f(x, k):
    conv.set_mode(mode_name)
    return jnp.sum(jnp.sin(conv.conv2d(x, k, s, p)))

  return f


@pytest.mark.parametrize("h,cin,cout,k,s,p", SHAPES)
def test_loop_safe_matches_xla(mode, h, cin, cout, k, s, p):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, h, h, cin))
  w = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout))
  mode("xla")
  ref = conv.conv2d(x, w, s, p)
  ref_g = jax.grad(_loss("xla", s, p), argnums=(0, 1))(x, w)
  mode("loop_safe")
  out = conv.conv2d(x, w, s, p)
  out_g = jax.grad(_loss("loop_safe", s, p), argnums=(0, 1))(x, w)
  assert out.shape == ref.shape
  if h >= k:  # the forward is XLA's own convolution: bitwise equal
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
  else:  # the im2col product: the same sum in another order
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
  for a, b in zip(out_g, ref_g):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-5)


def _conv_forms(mode_name):
  """dim_labels of every convolution of a compiled 3-step scan of conv-stack gradients."""
  conv.set_mode(mode_name)
  x = jnp.ones((4, 8, 8, 3))
  ws = [jnp.full((3, 3, 3, 8), 0.1), jnp.full((3, 3, 8, 8), 0.1), jnp.full((3, 3, 8, 8), 0.1)]

  def net(ws, x):
    h = jnp.tanh(conv.conv2d(x, ws[0], 1, 1))
    h = jnp.tanh(conv.conv2d(h, ws[1], 2, 1))  # 8 -> 4
    h = h[:, :2, :2]  # a stage smaller than the kernel
    return jnp.sum(jnp.tanh(conv.conv2d(h, ws[2], 1, 1)) ** 2)

  def step(ws, _):
    g = jax.grad(net)(ws, x)
    return [w - 0.01 * gw for w, gw in zip(ws, g)], None

  hlo = jax.jit(lambda ws: jax.lax.scan(step, ws, None, length=3)[0]).lower(ws).compile().as_text()
  return set(re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", hlo))


def test_gradient_in_scan_has_only_canonical_convolutions(mode):
  if jax.default_backend() != "cpu":
    pytest.skip("the canonical form matters for XLA:CPU")
  assert _conv_forms("loop_safe") == {"b01f_01io->b01f"}
  # and the check can fail: XLA's own autodiff leaves other forms in the loop body
  assert _conv_forms("xla") - {"b01f_01io->b01f"}


def test_unknown_mode_is_an_error():
  with pytest.raises(ValueError, match="conv mode"):
    conv.set_mode("fast")


@pytest.mark.parametrize("key,value", [("conv", "fast"), ("td_unroll", -1)])
def test_perf_options_are_validated(key, value):
  from configs import gaussians2d
  from dxmi_jax import experiment

  c = gaussians2d.get_config()
  c.perf[key] = value
  with pytest.raises(ConfigError, match=f"config.perf.{key}"):
    experiment.validate(c)


def test_unroll_options_reach_the_iteration():
  from configs import gaussians2d
  from dxmi_jax import dxmi_config

  c = gaussians2d.get_config()
  c.perf.td_unroll, c.perf.rollout_unroll = 0, 2
  cfg = dxmi_config.from_config(c)
  assert (cfg.unroll(cfg.td_unroll), cfg.unroll(cfg.rollout_unroll)) == (True, 2)
