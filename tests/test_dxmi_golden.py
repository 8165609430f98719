"""Parity with one iteration of the official DxMI_Trainer (golden README §C).

The official run's parameters, noise and orderings are fed through the same
functions production uses (``rollout``, ``avr_update``, ``energy_step``,
``td_value_scan``, ``policy_update`` and ``dxmi_iteration``), and every recorded
quantity is compared at rtol 1e-5 / atol 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import golden_mlp_params, torch_mlp_names
from dxmi_jax import dxmi
from dxmi_jax.models.mlp import TimeMLP
from dxmi_jax.policies.residual import ResidualPolicy
from dxmi_jax.state import TrainState, create_state

RTOL, ATOL = 1e-5, 1e-6
FILES = ["dxmi_iteration_2d.npz", "dxmi_iteration_2d_perm.npz"]


def _assert_close(actual, expected, what):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=RTOL, atol=ATOL, err_msg=what)


class Problem:
  """The recorded setup rebuilt in Flax."""

  def __init__(self, g):
    self.g = g
    T = int(g["config/n_timesteps"])
    self.T, self.B = T, int(g["config/batchsize"])
    self.cfg = dxmi.DxMIConfig(
      num_steps=T,
      tau1=float(g["config/tau1"]),
      tau2=float(g["config/tau2"]),
      gamma=float(g["config/gamma"]),
      adavelreg=float(g["config/adavelreg"]),
      time_cost_sig=float(g["config/time_cost_sig"]),
      time_cost=float(g["config/time_cost"]),
      skip_sampler_tau=int(g["config/skip_sampler_tau"]),
      value_grad_clip=0.1 if bool(g["config/value_grad_clip"]) else None,
      energy_grad_clip=None,
      policy_grad_clip=0.1,
      policy_minibatches=int(g["config/n_generator"]),
    )
    self.policy = ResidualPolicy(TimeMLP(out_dim=2, hidden=(16,), time_scale=1.0 / T), T, g["config/user_defined_eta"])
    self.value_module = TimeMLP(out_dim=1, hidden=(16, 16), time_scale=1.0 / T)
    self.value_apply = dxmi.module_apply(self.value_module)
    self.energy_of_value = lambda p, x, y: self.value_apply(p, x, jnp.full((x.shape[0],), T), y)
    self.nets = dxmi.Networks(policy=self.policy, value_apply=self.value_apply)
    pol_params = {
      "net": golden_mlp_params(g, "params_before/sampler", 2),
      "log_sigma": jnp.asarray(g["params_before/sampler/log_betas"]),
    }
    val_params = golden_mlp_params(g, "params_before/value", 3)
    self.state = create_state(
      jax.random.key(0),
      TrainState.create(apply_fn=None, params=pol_params, tx=optax.sgd(float(g["config/lr_sampler"]))),
      TrainState.create(apply_fn=None, params=val_params, tx=optax.sgd(float(g["config/lr_value"]))),
      self.policy.init_velocity_scale(),
    )
    self.noise = self._recorded_noise()

  def _recorded_noise(self):
    g, T, B = self.g, self.T, self.B
    perm_td = g["perm/update_f_v"] if "perm/update_f_v" in g else np.arange(T * B)
    perm_pol = g["perm/update_sampler"] if "perm/update_sampler" in g else np.arange(T * B)
    # TD minibatch of step t = the rows of timestep t (row r <-> t = r // B) in permutation order.
    td_order = np.stack([[r % B for r in perm_td if r // B == t] for t in range(T)]).astype(np.int32)
    M = self.cfg.policy_minibatches
    return dxmi.StepNoise(
      x0=jnp.asarray(g["noise/rollout"][0]),
      rollout=jnp.asarray(g["noise/rollout"][1:]),
      policy_index=jnp.asarray(perm_pol[: M * B].reshape(M, B), jnp.int32),
      policy_noise=jnp.asarray(g["noise/update_sampler"]),
      td_order=jnp.asarray(td_order),
      resample=None,
      dropout=jax.random.key(1),
    )


@pytest.fixture(params=FILES, scope="module")
def problem(request):
  from conftest import golden_path  # pylint: disable=import-outside-toplevel

  g = dict(np.load(golden_path(request.param)))
  return Problem(g)


def test_rollout_and_avr(problem):
  p, g = problem, problem.g
  traj = dxmi.rollout(p.policy, p.state.policy.params, p.noise.x0, p.noise.rollout)
  _assert_close(traj.states, g["rollout/states"], "states")
  _assert_close(traj.next_states, g["rollout/next_states"], "next states")
  _assert_close(traj.means, g["rollout/mean"], "means")
  _assert_close(traj.sigmas, g["rollout/sigma"][..., 0], "sigmas")
  # AVR: the official DxMI_Trainer stores s reversed (index 0 = last transition); we store
  # sampling order, so compare against the flipped recordings.
  _assert_close(p.state.velocity_scale, g["betas_for_q/before_avr"][::-1], "s init")
  s_new, m = dxmi.avr_update(p.state.velocity_scale, traj, p.cfg.adavelreg)
  _assert_close(m, g["betas_for_q/avr_diff"][::-1], "AVR mean squared step")
  _assert_close(s_new, g["betas_for_q/after_avr"][::-1], "s after AVR")


def test_energy_step(problem):
  p, g = problem, problem.g
  traj = dxmi.rollout(p.policy, p.state.policy.params, p.noise.x0, p.noise.rollout)
  value_state, aux = dxmi.energy_step(p.state.value, p.energy_of_value, jnp.asarray(g["data"]), traj.final, None, p.cfg)
  for k in ("pos_e_mean", "neg_e_mean", "reg", "d_loss"):
    _assert_close(aux[k.replace("_mean", "")], g[f"energy/{k}"], k)
  for name, grad in torch_mlp_names(aux["grads"], 3).items():
    _assert_close(grad, g[f"energy/grads/value/{name}"], f"energy grad {name}")
  for name, val in torch_mlp_names(value_state.params, 3).items():
    _assert_close(val, g[f"params_after_energy/value/{name}"], f"params after energy {name}")


def _through_td(p):
  g = p.g
  traj = dxmi.rollout(p.policy, p.state.policy.params, p.noise.x0, p.noise.rollout)
  s_new, _ = dxmi.avr_update(p.state.velocity_scale, traj, p.cfg.adavelreg)
  value_state, _ = dxmi.energy_step(p.state.value, p.energy_of_value, jnp.asarray(g["data"]), traj.final, None, p.cfg)
  value_state, td = dxmi.td_value_scan(value_state, p.value_apply, traj, s_new, p.cfg, td_order=p.noise.td_order)
  return traj, s_new, value_state, td


def test_td_value_scan(problem):
  p, g = problem, problem.g
  _, _, value_state, td = _through_td(p)
  for i in range(p.T):
    t = int(g[f"td/{i}/update_t"])  # TD step i updates timestep T-1-i; our aux is indexed by t
    assert t == p.T - 1 - i
    for ours, theirs in [
      ("v_next", "v_next"),
      ("target", "target"),
      ("v_xt", "v_xt"),
      ("v_loss", "v_loss"),
      ("running_cost", "running_cost"),
      ("grad_norm", "grad_norm_preclip"),
    ]:
      _assert_close(td[ours][t], g[f"td/{i}/{theirs}"], f"TD step t={t}: {ours}")
    for name, val in torch_mlp_names(jax.tree.map(lambda a: a[t], td["grads"]), 3).items():
      _assert_close(val, g[f"td/{i}/grads_clipped/value/{name}"], f"TD t={t} clipped grad {name}")
    for name, val in torch_mlp_names(jax.tree.map(lambda a: a[t], td["params_after"]), 3).items():
      _assert_close(val, g[f"td/{i}/params_after/value/{name}"], f"TD t={t} params {name}")
  for name, val in torch_mlp_names(value_state.params, 3).items():
    _assert_close(val, g[f"params_after_update_f_v/value/{name}"], f"value after update_f_v {name}")


@pytest.mark.parametrize("chunks", [1, 4])
def test_policy_update(problem, chunks):
  """Also with each minibatch's gradient accumulated over 4 chunks of its rows (perf.policy_grad_chunks):
  the same recorded step, per-row outputs back in row order."""
  p, g = problem, problem.g
  traj, s_new, value_state, _ = _through_td(p)
  assert p.B % chunks == 0 and not p.cfg.policy_train_mode  # no dropout: chunking changes no mask
  policy_state, aux = dxmi.policy_update(
    p.state.policy,
    p.policy,
    p.value_apply,
    value_state.params,
    traj,
    s_new,
    p.noise,
    p.cfg,
    perf=dxmi.Perf(policy_grad_chunks=chunks),
  )
  for m in range(p.cfg.policy_minibatches):
    pre = f"sampler_update/{m}"
    _assert_close(aux["t"][m], g[f"{pre}/t"], "minibatch timesteps")
    _assert_close(aux["state"][m], g[f"{pre}/state"], "minibatch states")
    for ours, theirs in [
      ("mean", "mean"),
      ("next_state", "next_state"),
      ("value_term", "value_term"),
      ("running_cost", "running_cost"),
      ("causal_entropy", "causal_entropy"),
      ("non_terminal", "non_terminal"),
      ("sampler_loss", "sampler_loss"),
      ("grad_norm", "grad_norm_preclip"),
    ]:
      _assert_close(aux[ours][m], g[f"{pre}/{theirs}"], f"minibatch {m}: {ours}")
    _assert_close(aux["sigma"][m], g[f"{pre}/sigma"][:, 0], f"minibatch {m}: sigma")
    grads = jax.tree.map(lambda a: a[m], aux["grads"])
    _assert_close(grads["log_sigma"], g[f"{pre}/grads_clipped/sampler/log_betas"], "log_sigma grad")
    for name, val in torch_mlp_names(grads["net"], 2).items():
      _assert_close(val, g[f"{pre}/grads_clipped/sampler/{name}"], f"minibatch {m} grad {name}")
    after = jax.tree.map(lambda a: a[m], aux["params_after"])
    _assert_close(after["log_sigma"], g[f"{pre}/params_after/sampler/log_betas"], "log_sigma after")
    for name, val in torch_mlp_names(after["net"], 2).items():
      _assert_close(val, g[f"{pre}/params_after/sampler/{name}"], f"minibatch {m} params {name}")
  _assert_close(policy_state.params["log_sigma"], g["params_after_update_sampler/sampler/log_betas"], "final log_sigma")


def test_full_iteration_matches(problem):
  """dxmi_iteration (what train_step runs) reproduces the whole recorded iteration, jitted."""
  p, g = problem, problem.g
  it = jax.jit(lambda s, b, n: dxmi.dxmi_iteration(s, b, n, p.nets, p.cfg))
  new_state, _ = it(p.state, {"x": jnp.asarray(g["data"])}, p.noise)
  for name, val in torch_mlp_names(new_state.value.params, 3).items():
    _assert_close(val, g[f"params_after_update_sampler/value/{name}"], f"value {name}")
  for name, val in torch_mlp_names(new_state.policy.params["net"], 2).items():
    _assert_close(val, g[f"params_after_update_sampler/sampler/{name}"], f"sampler {name}")
  _assert_close(new_state.policy.params["log_sigma"], g["params_after_update_sampler/sampler/log_betas"], "log_sigma")
  _assert_close(new_state.velocity_scale, g["betas_for_q/after_avr"][::-1], "s")
