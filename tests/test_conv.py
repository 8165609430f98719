"""models/conv.py: the loop-safe convolution equals XLA's, and keeps every convolution canonical.

The speed itself is measured in benchmarks/step_time.py; here we check what makes it:
inside a ``lax.scan`` the compiled gradient contains only NHWC/HWIO->NHWC convolutions,
the form XLA:CPU runs through its fast kernel.
"""

import re

import jax
import jax.extend.core
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


def _loss(mode_name, s, p):
  def f(x, k):
    return jnp.sum(jnp.sin(conv.conv2d(x, k, s, p, mode_name)))

  return f


@pytest.mark.parametrize("h,cin,cout,k,s,p", SHAPES)
def test_loop_safe_matches_xla(h, cin, cout, k, s, p):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, h, h, cin))
  w = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout))
  ref = conv.conv2d(x, w, s, p, "xla")
  ref_g = jax.grad(_loss("xla", s, p), argnums=(0, 1))(x, w)
  out = conv.conv2d(x, w, s, p, "loop_safe")
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
  x = jnp.ones((4, 8, 8, 3))
  ws = [jnp.full((3, 3, 3, 8), 0.1), jnp.full((3, 3, 8, 8), 0.1), jnp.full((3, 3, 8, 8), 0.1)]

  def net(ws, x):
    h = jnp.tanh(conv.conv2d(x, ws[0], 1, 1, mode_name))
    h = jnp.tanh(conv.conv2d(h, ws[1], 2, 1, mode_name))  # 8 -> 4
    h = h[:, :2, :2]  # a stage smaller than the kernel
    return jnp.sum(jnp.tanh(conv.conv2d(h, ws[2], 1, 1, mode_name)) ** 2)

  def step(ws, _):
    g = jax.grad(net)(ws, x)
    return [w - 0.01 * gw for w, gw in zip(ws, g)], None

  hlo = jax.jit(lambda ws: jax.lax.scan(step, ws, None, length=3)[0]).lower(ws).compile().as_text()
  return set(re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", hlo))


def test_gradient_in_scan_has_only_canonical_convolutions():
  if jax.default_backend() != "cpu":
    pytest.skip("the canonical form matters for XLA:CPU")
  assert _conv_forms("loop_safe") == {"b01f_01io->b01f"}
  # and the check can fail: XLA's own autodiff leaves other forms in the loop body
  assert _conv_forms("xla") - {"b01f_01io->b01f"}


def test_unknown_mode_is_an_error():
  with pytest.raises(ValueError, match="conv mode"):
    conv.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), 1, 1, "fast")


def test_auto_resolves_by_backend():
  assert conv.resolved_mode("auto") == ("loop_safe" if jax.default_backend() == "cpu" else "xla")
  assert [conv.resolved_mode(m) for m in ("xla", "loop_safe")] == ["xla", "loop_safe"]


# every network with convolutions, small: each of its convolution layers must get the mode
NETWORKS = {
  "ddpm_unet": (dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16), 16, 3),
  "adm_unet": (
    dict(
      image_size=16,
      model_channels=32,
      num_res_blocks=1,
      channel_mult=(1, 2),
      attention_resolutions=(8,),
      num_head_channels=16,
      num_classes=None,
    ),
    16,
    3,
  ),
  "igebm": (dict(nh=4), 8, 3),
  "ddgan_ncsnpp": (
    dict(
      image_size=8,
      num_channels_dae=8,
      ch_mult=(1, 2),
      num_res_blocks=1,
      attn_resolutions=(4,),
      nz=4,
      z_emb_dim=8,
      n_mlp=1,
    ),
    8,
    3,
  ),
}


def _traced(arch, conv_mode):
  """(convolutions outside a custom gradient, loop-safe convolutions) of the network's forward."""
  from dxmi_jax.models import registry

  cfg, size, chans = NETWORKS[arch]
  model = registry.build(arch, cfg, conv_mode=conv_mode)
  x, t = jnp.zeros((2, size, size, chans)), jnp.zeros((2,), jnp.float32)
  kw = {"z": jnp.zeros((2, cfg["nz"]))} if arch == "ddgan_ncsnpp" else {}
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, **kw))
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, x, t, **kw))(params).jaxpr

  def count(jaxpr):
    plain, safe = 0, 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name.startswith("custom_vjp_call"):
        safe += 1
        continue
      plain += eqn.primitive.name == "conv_general_dilated"
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        a, b = count(sub)
        plain, safe = plain + a, safe + b
    return plain, safe

  return count(jaxpr)


@pytest.mark.parametrize("arch", sorted(NETWORKS))
def test_networks_carry_the_mode_to_every_convolution(arch):
  """conv_mode is a field of the networks (no global): "xla" reaches every convolution layer
  (none is loop-safe, though "auto" is loop-safe on a CPU), "loop_safe" too (none is plain)."""
  n, safe = _traced(arch, "xla")
  assert n > 0 and safe == 0
  assert _traced(arch, "loop_safe") == (0, n)


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
  perf = dxmi_config.perf_from_config(c)
  T = c.policy.num_steps
  assert (perf.unroll(perf.td_unroll, T), perf.unroll(perf.rollout_unroll, T)) == (True, 2)


@pytest.mark.parametrize("mode_name", conv.MODES)
def test_conv_option_reaches_the_networks(mode_name):
  from configs import digits
  from dxmi_jax import networks

  c = digits.get_config()
  c.perf.conv = mode_name
  assert networks.build_value(c).conv_mode == mode_name
  assert networks.build_net(c.policy.net, c.perf.conv).conv_mode == mode_name
