"""The samplers against closed form: Gaussian data with the exact epsilon-network.

For data N(0, s^2 I) the optimal epsilon prediction at DDPM time k is
eps*(x) = sqrt(1 - abar_k) x / (abar_k s^2 + 1 - abar_k).  Ho et al.'s 1000-step
ancestral sampler with it must reproduce std s; the few-step VAR chains start at
abar = Gamma_bar[T-1] (not abar_999) and take coarse steps, so they shrink the
variance, less so the more steps they take.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dxmi_jax import generation
from dxmi_jax.policies import DDPMAncestralPolicy, VARPolicy
from dxmi_jax.policies.schedules import ddpm_schedule

S = 0.5


class OptimalEps(nn.Module):
  @nn.compact
  def __call__(self, x, t, y=None, deterministic=True):
    self.param("unused", nn.initializers.zeros, (1,))
    abar = jnp.asarray(ddpm_schedule().alpha_bar)
    k = jnp.clip(t, 0.0, 999.0)
    lo = jnp.floor(k).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, 999)
    w = k - lo
    a = jnp.exp((1 - w) * jnp.log(abar[lo]) + w * jnp.log(abar[hi]))[:, None]
    return jnp.sqrt(1 - a) * x / (a * S**2 + 1 - a)


def _std(policy, n=20000):
  params = policy.init_params(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
  x = jax.jit(lambda p, k: generation.generate(policy, p, k, n, (2,)))(params, jax.random.PRNGKey(1))
  x = np.asarray(x)
  assert abs(x.mean()) < 0.02
  return float(x.std())


def test_ddpm_1000_reproduces_the_data_std():
  np.testing.assert_allclose(_std(DDPMAncestralPolicy(OptimalEps())), S, rtol=0.02)


def test_var_chains_shrink_less_with_more_steps():
  stds = [_std(VARPolicy(OptimalEps(), T)) for T in (5, 10, 100)]
  assert stds[0] < stds[1] < stds[2] < S * 1.02, stds
  np.testing.assert_allclose(stds[2], S, rtol=0.06)
  ddim = _std(VARPolicy(OptimalEps(), 10, trainable_sigma=False, sampler="ddim"))
  assert stds[1] < ddim < S, (stds[1], ddim)  # deterministic DDIM on the same schedule: closer
