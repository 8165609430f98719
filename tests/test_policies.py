"""Policies (VAR / DDIM / DDPM-1000 / EDM) against the official code's golden vectors.

Golden: ``schedules.npz`` (README section B), arrays NCHW (3, 4, 4) per sample;
we run NHWC and transpose.  Toy networks (as the golden generator used them):
VAR eps(x, tau) = 0.5 x + 0.001 tau; EDM raw UNet F(u, t, y) = 0.5 u + 0.01 t.
"""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REFERENCE, REPO, golden_path
from dxmi_jax.policies import (
  MANIFOLDS,
  DDPMAncestralPolicy,
  EDMPolicy,
  POLICY_KINDS,
  VARPolicy,
  build_policy,
  schedules,
)

RTOL_CONST = 1e-6  # schedule constants (golden README B)
RTOL_RUN, ATOL_RUN = 1e-5, 1e-4  # toy step / rollout arrays (golden README B)
EDM_CFG = {10: dict(rho=7.0, stochastic_last=False), 4: dict(rho=4.0, stochastic_last=True)}


class ToyEps(nn.Module):
  """eps(x, tau) = a x + c tau with a = 0.5, c = 0.001 (trainable scalars)."""

  @nn.compact
  def __call__(self, x, t, y=None, deterministic=True):
    a = self.param("a", nn.initializers.constant(0.5), ())
    c = self.param("c", nn.initializers.constant(0.001), ())
    return a * x + c * t.reshape((-1,) + (1,) * (x.ndim - 1))


class ToyUNet(nn.Module):
  """F(u, t, y) = a u + c t with a = 0.5, c = 0.01; y is accepted and ignored."""

  @nn.compact
  def __call__(self, x, t, y=None, deterministic=True):
    a = self.param("a", nn.initializers.constant(0.5), ())
    c = self.param("c", nn.initializers.constant(0.01), ())
    return a * x + c * t.reshape((-1,) + (1,) * (x.ndim - 1))


def nhwc(a):
  a = np.asarray(a)
  return np.moveaxis(a, -3, -1)


def close(actual, desired, rtol=RTOL_RUN, atol=ATOL_RUN, err=""):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=rtol, atol=atol, err_msg=err)


@pytest.fixture(scope="module")
def sched():
  return dict(np.load(golden_path("schedules.npz")))


def _init(policy, x, y=None):
  return policy.init_params(jax.random.PRNGKey(0), jnp.asarray(x), y)


def _rollout(policy, params, x0, noise, y=None):
  """x_0 .. x_T, means, sigmas with the recorded noise (lax.scan over ``step``)."""
  b = x0.shape[0]

  def body(x, inp):
    t, eps = inp
    out = policy.step(params, x, jnp.full((b,), t, jnp.int32), eps, y)
    return out.sample, (out.sample, out.mean, out.sigma, out.log_sigma)

  _, (xs, means, sigmas, logs) = jax.lax.scan(body, x0, (jnp.arange(policy.num_steps, dtype=jnp.int32), noise))
  return jnp.concatenate([x0[None], xs]), means, sigmas, logs


# --------------------------------------------------------------------------- schedules
def test_ddpm1000_schedule(sched):
  d = schedules.ddpm_schedule()
  close(d.beta, sched["ddpm1000/Beta"], rtol=RTOL_CONST, atol=0)
  close(d.alpha_bar, sched["ddpm1000/Alpha_bar"], rtol=RTOL_CONST, atol=0)


@pytest.mark.parametrize("T", [10, 4])
def test_var_schedule_constants(sched, T):
  g = {k.split("/", 1)[1]: v for k, v in sched.items() if k.startswith(f"var_T{T}/")}
  s = schedules.var_schedule(T)
  close(s.eta, g["user_defined_eta"], rtol=1e-12, atol=0)
  assert s.eta.dtype == np.float64
  for ours, key in [
    (s.gamma_bar, "Gamma_bar"),
    (s.tau, "continuous_steps"),
    (s.tau, "diffusion_steps_list"),
    (s.x_mult, "x_prev_multiplier"),
    (s.eps_mult, "theta_multiplier"),
    (s.std, "std"),
    (s.log_sigma_init, "log_betas_init"),
    (s.velocity_scale_init[::-1], "betas_for_q_init"),
  ]:
    close(ours, g[key], rtol=RTOL_CONST, atol=0, err=key)
    assert ours.dtype == np.float32, key
  # The bisection ends at the interval bound for T = 10 and 4 (reference §3a).
  assert not s.target_reached and s.eta_x == s.eta_x_max
  policy = VARPolicy(ToyEps(), T)
  np.testing.assert_array_equal(policy.trainable_log_sigma_mask, g["log_betas_used_mask"] == 1)
  close(policy.init_velocity_scale(), g["betas_for_q_init"][::-1], rtol=RTOL_CONST, atol=0)
  # Effective log sigma of every step at initialisation (fix_last reads std[-1]).
  x = jnp.zeros((T, 4, 4, 3))
  params = _init(policy, x)
  out = policy.step(params, x, jnp.arange(T), jnp.zeros_like(x))
  close(out.log_sigma, g["log_sigma_effective"], rtol=RTOL_CONST, atol=0)


def test_var_schedule_json(sched):
  ref = json.loads((REFERENCE / "schedules.json").read_text())["cifar10_VAR_T10"]
  s = schedules.var_schedule(10)
  close(s.tau, ref["continuous_steps__sampling_order"], rtol=RTOL_CONST, atol=0)
  close(s.eps_mult, ref["theta_multiplier__sampling_order"], rtol=RTOL_CONST, atol=0)


def test_last_tau_is_the_official_root(sched):
  """The last tau solves log abar(tau) = log(1 - beta_0); only rounding noise separates roots.

  The official value (numpy 1.26 AVX512F log) is pinned; our libm-log bisection
  lands elsewhere on the same flat rounding step.  Justified tolerance: the
  Stirling difference LG(c+1) - LG(c-tau) (terms ~5e5) is quantised to
  ulp(5e5) = 1.16e-10, and |d log abar / d tau| ~ 1.1e-4 at tau ~ 0, so roots
  computed with different (1-ulp) logs may differ by up to 1.16e-10/1.1e-4 ~ 1.1e-6.
  """
  golden_tau = sched["var_T10/continuous_steps"][-1]
  assert np.float32(schedules.LAST_TAU_OFFICIAL) == golden_tau
  target = float(np.log(np.float32(1) - np.float32(schedules.BETA_START)))
  for tau in (schedules.LAST_TAU_OFFICIAL, schedules.var_schedule(10, pin_last_tau=False).tau[-1]):
    assert abs(schedules.stirling_log_alpha_bar(float(tau)) - target) <= 2.5e-10
  unpinned = schedules.var_schedule(10, pin_last_tau=False).tau
  assert abs(float(unpinned[-1]) - float(golden_tau)) <= 1.1e-6
  close(unpinned[:-1], sched["var_T10/continuous_steps"][:-1], rtol=RTOL_CONST, atol=0)


@pytest.mark.parametrize("T", [10, 4])
def test_edm_schedule_constants(sched, T):
  g = {k.split("/", 1)[1]: v for k, v in sched.items() if k.startswith(f"edm_T{T}/")}
  assert float(g["rho"]) == EDM_CFG[T]["rho"] and bool(g["stochastic_last"]) == EDM_CFG[T]["stochastic_last"]
  s = schedules.karras_schedule(T, **EDM_CFG[T])
  for ours, key in [
    (s.sigmas, "sigmas"),
    (s.sigma_up, "sigma_up"),
    (s.sigma_down, "sigma_down"),
    (s.log_sigma_init, "log_betas_init"),
    (s.velocity_scale_init, "betas_for_q_init_cond_trainer"),
  ]:
    close(ours, g[key], rtol=RTOL_CONST, atol=0, err=key)
  policy = EDMPolicy(ToyUNet(), T, **EDM_CFG[T])
  assert policy.prior_std == 80.0
  close(policy.init_velocity_scale(), g["betas_for_q_init_cond_trainer"], rtol=RTOL_CONST, atol=0)
  x = jnp.zeros((T, 4, 4, 3))
  params = _init(policy, x, jnp.zeros((T,), jnp.int32))
  out = policy.step(params, x, jnp.arange(T), jnp.zeros_like(x))
  close(out.sigma, g["sigma_used_init"], rtol=RTOL_CONST, atol=0)
  close(jnp.exp(out.log_sigma), g["sigma_returned_init"], rtol=RTOL_CONST, atol=0)
  ref = json.loads((REFERENCE / "schedules.json").read_text())
  key = "edm_T10_rho7_deterministic_last" if T == 10 else "edm_T4_rho4_stochastic_last"
  close(policy.net_time(jnp.arange(T)), ref[key]["c_noise=250*log(sigma_t)"], rtol=RTOL_CONST, atol=0)


# ---------------------------------------------------------------------- toy step / rollout
@pytest.mark.parametrize("T", [10, 4])
def test_var_step_and_rollout(sched, T):
  g = {k.split("/", 1)[1]: v for k, v in sched.items() if k.startswith(f"var_T{T}/")}
  policy = VARPolicy(ToyEps(), T, trainable_sigma="fix_last")
  x = jnp.asarray(nhwc(g["step/x"]))
  params = _init(policy, x)
  with jax.default_matmul_precision("highest"):
    t = jnp.asarray(g["step/t"], jnp.int32)
    np.testing.assert_array_equal(np.asarray(t), np.arange(T))  # one timestep per sample
    out = jax.jit(policy.step)(params, x, t, jnp.asarray(nhwc(g["step/noise"])))
    close(out.mean, nhwc(g["step/mean"]))
    close(out.sigma, g["step/sigma"].reshape(T))
    close(out.log_sigma, g["step/entropy"].reshape(T))
    close(out.sample, nhwc(g["step/sample"]))
    close(policy.apply_net(params, x, policy.net_time(t)), nhwc(g["step/eps_toy"]))

    noise = jnp.asarray(nhwc(g["rollout/noise"]))
    xs, means, sigmas, _ = jax.jit(lambda p, n: _rollout(policy, p, n[0], n[1:]))(params, noise)
  close(xs, nhwc(g["rollout/l_sample"]))
  close(means, nhwc(g["rollout/mean"]))
  close(sigmas, g["rollout/sigma"].reshape(T, -1))


@pytest.mark.parametrize("T", [10, 4])
def test_edm_step_and_rollout(sched, T):
  g = {k.split("/", 1)[1]: v for k, v in sched.items() if k.startswith(f"edm_T{T}/")}
  policy = EDMPolicy(ToyUNet(), T, **EDM_CFG[T])
  x = jnp.asarray(nhwc(g["step/x"]))
  y = jnp.asarray(g["step/y"], jnp.int32)
  params = _init(policy, x, y)
  with jax.default_matmul_precision("highest"):
    t = jnp.asarray(g["step/indices"], jnp.int32)
    out = jax.jit(policy.step)(params, x, t, jnp.asarray(nhwc(g["step/noise"])), y)
    close(policy.denoise(params, x, t, y), nhwc(g["step/denoised"]))
    close(out.mean, nhwc(g["step/mean"]))
    close(jnp.maximum(out.sigma, 1e-4), g["step/sigma"])
    close(out.log_sigma, np.log(g["step/sigma"]))
    close(out.sample, nhwc(g["step/sample"]))

    yr = jnp.asarray(g["rollout/y"], jnp.int32)
    xs, means, _, logs = jax.jit(lambda p, x0, n: _rollout(policy, p, x0, n, yr))(
      params, jnp.asarray(nhwc(g["rollout/x0"])), jnp.asarray(nhwc(g["rollout/noise"]))
    )
  close(xs, nhwc(g["rollout/l_sample"]))
  close(means, nhwc(g["rollout/mean"]))
  close(jnp.exp(logs), g["rollout/sigma"])


def test_mixed_timesteps_are_per_sample(sched):
  """Shuffling (x, t) rows of a mixed batch shuffles the outputs; scalar t broadcasts."""
  g = {k.split("/", 1)[1]: v for k, v in sched.items() if k.startswith("edm_T10/")}
  policy = EDMPolicy(ToyUNet(), 10)
  x, y, noise = (
    jnp.asarray(nhwc(g["step/x"])),
    jnp.asarray(g["step/y"], jnp.int32),
    jnp.asarray(nhwc(g["step/noise"])),
  )
  params = _init(policy, x, y)
  perm = np.array([7, 2, 9, 0, 4, 1, 8, 3, 6, 5])
  step = jax.jit(policy.step)
  ref = step(params, x, jnp.arange(10), noise, y)
  out = step(params, x[perm], jnp.asarray(perm), noise[perm], y[perm])
  close(out.sample, np.asarray(ref.sample)[perm], rtol=1e-6, atol=0)
  close(out.log_sigma, np.asarray(ref.log_sigma)[perm], rtol=1e-6, atol=0)
  vpol = VARPolicy(ToyEps(), 10)
  xv = jnp.asarray(nhwc(sched["var_T10/step/x"]))
  pv = _init(vpol, xv)
  vref = vpol.step(pv, xv, jnp.full((10,), 3), xv)
  vout = vpol.step(pv, xv, 3, xv)
  close(vout.sample, vref.sample, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["var", "edm"])
def test_fix_last_log_sigma_gets_no_gradient(kind):
  T = 4
  policy = VARPolicy(ToyEps(), T) if kind == "var" else EDMPolicy(ToyUNet(), T, rho=4.0, stochastic_last=True)
  x = jax.random.normal(jax.random.PRNGKey(1), (T, 4, 4, 3))
  noise = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  params = _init(policy, x)

  def loss(p):
    out = policy.step(p, x, jnp.arange(T), noise)
    return jnp.sum(out.sample**2) - jnp.sum(out.log_sigma)

  grad = jax.grad(loss)(params)["log_sigma"]
  assert grad[T - 1] == 0.0
  assert np.all(np.asarray(grad[: T - 1]) != 0.0)
  np.testing.assert_array_equal(policy.trainable_log_sigma_mask, [True] * (T - 1) + [False])


# ---------------------------------------------------------------- schedules for other T
def test_var_schedules_for_other_T(golden):
  abar = schedules.ddpm_schedule().alpha_bar
  # T = 5: the 2D toy trainer's eta (golden C), again at the bisection bound.
  eta5 = np.load(golden("dxmi_iteration_2d.npz"))["config/user_defined_eta"]
  s5 = schedules.var_schedule(5)
  close(s5.eta, eta5, rtol=1e-12, atol=0)
  assert not s5.target_reached and s5.eta_x == s5.eta_x_max == 19.0
  # T = 1000: the target is reachable, so Gamma_bar[-1] meets abar_999 within the
  # bisection tolerance (1e-4) plus float32 cumprod rounding.
  s1000 = schedules.var_schedule(1000)
  assert s1000.target_reached and s1000.eta_x < s1000.eta_x_max
  assert abar[-1] <= s1000.gamma_bar[-1] <= abar[-1] * (1 + 1e-4 + 1e-5)
  for s in (schedules.var_schedule(1), schedules.var_schedule(2), s5, s1000):
    T = s.num_steps
    for a in (s.tau, s.x_mult, s.eps_mult, s.std, s.log_sigma_init, s.ddim_x_mult, s.ddim_eps_mult):
      assert a.shape == (T,) and np.all(np.isfinite(a))
    assert np.all(np.diff(s.gamma_bar) < 0) and np.all(np.diff(s.eta) > 0)
    assert np.all(np.diff(s.tau) < 0) and 0 < s.tau[-1] and s.tau[0] <= 999
    assert np.all(s.std > 0) and s.std[-1] == np.float32(0.001) and s.sigma[-1] == 0
    assert s.tau[-1] == np.float32(schedules.LAST_TAU_OFFICIAL)  # Gamma_bar[0] = 1 - beta_0
    # Closed form: with x = sqrt(G_cur) x0 + sqrt(1 - G_cur) e the mean is
    # sqrt(G_next) x0 + sqrt(1 - G_next - sigma^2) e (ancestral) and the DDIM mean
    # sqrt(G_next) x0 + sqrt(1 - G_next) e.
    cur = s.gamma_bar[::-1].astype(np.float64)
    nxt = np.append(cur[1:], 1.0)
    sig = s.sigma.astype(np.float64)
    np.testing.assert_allclose(s.x_mult * np.sqrt(cur), np.sqrt(nxt), rtol=1e-5)
    np.testing.assert_allclose(
      s.x_mult * np.sqrt(1 - cur) + s.eps_mult, np.sqrt(np.maximum(1 - nxt - sig**2, 0)), atol=2e-5
    )
    np.testing.assert_allclose(s.ddim_x_mult * np.sqrt(1 - cur) + s.ddim_eps_mult, np.sqrt(1 - nxt), atol=2e-5)


def test_ddpm_ancestral_policy():
  s = schedules.ddpm_ancestral_schedule()
  d = schedules.ddpm_schedule()
  k = np.arange(1000)[::-1]
  # Closed form: a x_k + b e with x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) e is the
  # posterior mean  sqrt(abar_{k-1}) beta_k / (1 - abar_k) x0
  #               + sqrt(alpha_k) (1 - abar_{k-1}) / (1 - abar_k) x_k.
  ab, al, be = (d.alpha_bar[k].astype(np.float64), d.alpha[k].astype(np.float64), d.beta[k].astype(np.float64))
  ab_prev = np.append(ab[1:], 1.0)
  x0c = s.x_mult * np.sqrt(ab)
  ec = s.x_mult * np.sqrt(1 - ab) + s.eps_mult
  post_x0 = np.sqrt(ab_prev) * be / (1 - ab)
  post_xk = np.sqrt(al) * (1 - ab_prev) / (1 - ab)
  # The identity needs abar_k = abar_{k-1} alpha_k; the float32 cumprod breaks it by
  # ~6e-8 relative per step, i.e. up to ~2e-4 relative to 1 - abar near the data.
  far = (1 - ab) > 0.05
  np.testing.assert_allclose(x0c[far], (post_x0 + post_xk * np.sqrt(ab))[far], rtol=1e-5)
  np.testing.assert_allclose(x0c, post_x0 + post_xk * np.sqrt(ab), rtol=5e-4)
  # At k = 0 the exact value is 0; float32 1 - abar_0 = beta_0 (1 +- 6e-4) leaves
  # ~sqrt(beta_0) 3e-4 = 3e-6.
  np.testing.assert_allclose(ec, post_xk * np.sqrt(1 - ab), rtol=5e-4, atol=5e-6)
  assert s.sigma[-1] == 0 and np.all(s.sigma[:-1] > 0)
  policy = DDPMAncestralPolicy(ToyEps())
  x = jnp.ones((3, 4, 4, 3))
  params = _init(policy, x)
  t = jnp.asarray([0, 500, 999])
  close(policy.net_time(t), [999.0, 499.0, 0.0], rtol=0, atol=0)
  out = policy.step(params, x, t, jnp.ones_like(x))
  eps = 0.5 + 0.001 * np.array([999.0, 499.0, 0.0])
  want = s.x_mult[[0, 500, 999]] + s.eps_mult[[0, 500, 999]] * eps + s.sigma[[0, 500, 999]]
  close(out.sample[:, 0, 0, 0], want, rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="num_steps"):
    DDPMAncestralPolicy(ToyEps(), 10)


def test_ddim_policy_is_deterministic():
  policy = VARPolicy(ToyEps(), 4, trainable_sigma=False, sampler="ddim")
  x = jnp.ones((4, 4, 4, 3))
  params = _init(policy, x)
  out = policy.step(params, x, jnp.arange(4), 100.0 * jnp.ones_like(x))
  close(out.sample, out.mean, rtol=0, atol=0)
  assert np.all(np.isfinite(np.asarray(out.log_sigma)))
  with pytest.raises(ValueError, match="trainable_sigma=False"):
    VARPolicy(ToyEps(), 4, trainable_sigma="fix_last", sampler="ddim")


def test_trainable_sigma_modes():
  T = 4
  x = jnp.zeros((T, 4, 4, 3))
  s = schedules.var_schedule(T)
  for mode in (True, False):
    policy = VARPolicy(ToyEps(), T, trainable_sigma=mode)
    params = _init(policy, x)
    params = {**params, "log_sigma": params["log_sigma"] + 1.0}  # moved off the schedule
    out = policy.step(params, x, jnp.arange(T), x)
    expect = s.std * np.e if mode else s.std
    close(out.sigma, expect, rtol=1e-6, atol=0)
    assert np.asarray(policy.trainable_log_sigma_mask).all() == mode
  e = schedules.karras_schedule(10)
  policy = EDMPolicy(ToyUNet(), 10, trainable_sigma=False)
  out = policy.step(
    _init(policy, jnp.zeros((10, 4, 4, 3))), jnp.zeros((10, 4, 4, 3)), jnp.arange(10), jnp.zeros((10, 4, 4, 3))
  )
  close(out.sigma, e.sigma_up, rtol=0, atol=0)
  assert float(out.log_sigma[-1]) == pytest.approx(math.log(1e-4), rel=1e-6)


# ------------------------------------------------------------------------------ factory
def test_build_policy():
  def cfg(**kw):
    return ml_collections.ConfigDict({"policy": kw})

  p = build_policy(cfg(kind="var", num_steps=10), ToyEps())
  assert isinstance(p, VARPolicy) and p.num_steps == 10 and p.trainable_sigma == "fix_last"
  p = build_policy(cfg(kind="ddim", num_steps=4), ToyEps())
  assert isinstance(p, VARPolicy) and p.sampler == "ddim"
  p = build_policy({"policy": {"kind": "ddpm"}}, ToyEps())
  assert isinstance(p, DDPMAncestralPolicy) and p.num_steps == 1000
  p = build_policy(
    cfg(kind="edm", num_steps=4, rho=4.0, stochastic_last=True, sigma_min=0.002, sigma_max=80, sigma_data=0.5),
    ToyUNet(),
  )
  assert isinstance(p, EDMPolicy) and p.schedule.stochastic_last and p.prior_std == 80.0
  p = build_policy(cfg(kind="residual", num_steps=5), ToyEps())
  np.testing.assert_allclose(p.init_velocity_scale(), schedules.var_schedule(5).eta[::-1])
  assert set(POLICY_KINDS) == {"var", "ddim", "ddpm", "edm", "residual", "ddgan"}
  for bad, key in [
    (dict(kind="foo", num_steps=4), "config.policy.kind"),
    (dict(kind="var"), "config.policy.num_steps"),
    (dict(kind="var", num_steps=0), "config.policy.num_steps"),
    (dict(kind="var", num_steps=2.5), "config.policy.num_steps"),
    (dict(kind="var", num_steps=4, trainable_sigma="yes"), "config.policy.trainable_sigma"),
    (dict(kind="ddim", num_steps=4, trainable_sigma=True), "config.policy.trainable_sigma"),
    (dict(kind="ddpm", num_steps=10), "config.policy.num_steps"),
    (dict(kind="edm", num_steps=4, sigma_min=-1.0), "config.policy.sigma_min"),
    (dict(kind="edm", num_steps=4, sigma_max=0.001), "config.policy.sigma_max"),
    (dict(kind="edm", num_steps=4, rho=0.0), "config.policy.rho"),
    (dict(kind="edm", num_steps=4, stochastic_last="no"), "config.policy.stochastic_last"),
  ]:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
      build_policy(cfg(**bad), ToyEps())
  with pytest.raises(ValueError, match="config.policy"):
    build_policy(ml_collections.ConfigDict({"model": {}}), ToyEps())


def test_default_config_lists_every_policy_kind_and_manifold():
  """configs/default.py's comments on config.policy.kind and .manifold name what policies accepts."""
  text = (REPO / "configs" / "default.py").read_text(encoding="utf-8")
  for key, expected in (("kind", POLICY_KINDS), ("manifold", MANIFOLDS)):
    (line,) = [l for l in text.splitlines() if l.strip().startswith(f"c.policy.{key} =")]
    listed = line.split("#", 1)[1].split("(", 1)[0]
    assert [k.strip() for k in listed.split("|")] == list(expected), line
