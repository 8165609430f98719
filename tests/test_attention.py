"""Attention over query chunks (models/attention.py): the same attention, in less memory."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from dxmi_jax import experiment, networks
from dxmi_jax.errors import ConfigError
from dxmi_jax.models import adm_unet, attention, ddpm_unet


def _block(cls, x, chunk, **kw):
  plain, chunked = cls(query_chunk=0, **kw), cls(query_chunk=chunk, **kw)
  params = plain.init(jax.random.PRNGKey(0), x)["params"]
  # proj_out of the ADM block is zero-initialised: give it weights so the attention shows
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  return plain, chunked, params


@pytest.mark.parametrize("which", ["adm", "ddpm"])
def test_chunked_attention_equals_plain(which):
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 32))
  if which == "adm":
    plain, chunked, params = _block(adm_unet.AttentionBlock, x, 16, num_heads=2)
  else:
    plain, chunked, params = _block(ddpm_unet.AttnBlock, x, 16)

  def loss(module, p, x):
    return jnp.sum(jnp.sin(module.apply({"params": p}, x)))

  y0, y1 = plain.apply({"params": params}, x), chunked.apply({"params": params}, x)
  assert float(jnp.max(jnp.abs(y0 - x))) > 1e-2  # the attention contributes
  np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), rtol=1e-5, atol=1e-5)
  g0 = jax.grad(lambda p, x: loss(plain, p, x), argnums=(0, 1))(params, x)
  g1 = jax.grad(lambda p, x: loss(chunked, p, x), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_chunked_attention_gradient_needs_less_memory():
  """Compile only: the gradient of a 32x32 (1024-token) attention block keeps one query
  block's scores alive, not the whole (B, heads, 1024, 1024) matrix."""
  x = jax.ShapeDtypeStruct((2, 32, 32, 32), jnp.float32)

  def temp_bytes(chunk):
    module = adm_unet.AttentionBlock(num_heads=2, query_chunk=chunk)
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(x.shape))["params"])
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply({"params": p}, x) ** 2)))
    return grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes

  full, chunked = temp_bytes(0), temp_bytes(128)
  scores = 2 * 2 * 1024 * 1024 * 4  # one float32 score matrix
  assert full > scores
  assert chunked < full / 3, (chunked, full)


def test_chunk_that_does_not_divide_the_tokens_is_one_clear_error():
  with pytest.raises(ValueError, match=r"attention_chunk=48 does not divide the 256 tokens"):
    attention.check_chunk(48, 256)
  with pytest.raises(ValueError, match=r"expected an integer >= 0"):
    attention.check_chunk(-1, 256)
  attention.check_chunk(512, 256)  # larger than the layer: the plain call
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  from configs import cifar10  # pylint: disable=import-outside-toplevel

  c = cifar10.get_config("smoke")
  assert networks.attended_tokens(c.policy.net) == [256]
  c.policy.net.attention_chunk = 48
  with pytest.raises(ConfigError, match=r"config\.policy\.net\.attention_chunk=48 does not divide the 256 tokens"):
    experiment.validate(c)
  c.policy.net.attention_chunk = 64
  experiment.validate(c)
