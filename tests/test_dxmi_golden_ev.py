"""Parity with one iteration of the official DxMI_Trainer_EV (golden README §D).

The anomaly-detection trainer: a separate energy f (no gamma, gradient clipped at 0.1), TD
targets with the full +tau2 c_t - tau1 log sigma_t recursion on *resampled* next states (f of the
resampled x_T at t = T-1), no time cost, no value clip, no non-terminal mask, and AVR scales
initialised from exp(log_sigma) in the EV trainer's index order.  The DxMIConfig is the one
``configs/anomaly.py:mlp`` (the EV trainer as released) produces at the recorded T, so that
config is what is pinned.
The official run's parameters, noise and orderings go through the same functions production
runs, and every recorded quantity is compared at rtol 1e-5 / atol 1e-6.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import anomaly as anomaly_config
from conftest import golden_mlp_params, torch_mlp_names
from dxmi_jax import dxmi, dxmi_config
from dxmi_jax.proj.anomaly.networks import EnergyMLP
from dxmi_jax.models.mlp import TimeMLP
from dxmi_jax.policies.residual import ResidualPolicy
from dxmi_jax.state import TrainState, create_state

RTOL, ATOL = 1e-5, 1e-6
FILE = "dxmi_iteration_ev_2d.npz"
ETA = np.array([1e-4, 0.04, 0.1521, 0.3364, 0.5929])  # the recorded log_betas are 0.5 log(eta[::-1])


def _close(actual, expected, what):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=RTOL, atol=ATOL, err_msg=what)


def production_cfg(T, tau1, tau2, adavelreg):
  """configs/anomaly.py:mlp's DxMIConfig at the recorded T, tau and AVR factor."""
  c = anomaly_config.get_config("mlp")
  c.policy.num_steps = T
  c.dxmi.tau1, c.dxmi.tau2, c.dxmi.adavelreg = tau1, tau2, adavelreg
  return dxmi_config.from_config(c)


class Problem:
  """The recorded setup rebuilt in Flax."""

  def __init__(self, g):
    self.g = g
    T, B = int(g["config/T"]), int(g["config/B"])
    self.T, self.B = T, B
    self.cfg = production_cfg(T, float(g["config/tau1"]), float(g["config/tau2"]), float(g["config/adavelreg"]))
    lr = float(g["config/lr"])
    self.policy = ResidualPolicy(TimeMLP(out_dim=2, hidden=(16,), time_scale=1.0 / T), T, ETA)
    self.value_apply = dxmi.module_apply(TimeMLP(out_dim=1, hidden=(16, 16), time_scale=1.0 / T))
    self.energy_apply = dxmi.module_apply(EnergyMLP(hidden=(16, 16)), with_time=False)
    self.nets = dxmi.Networks(policy=self.policy, value_apply=self.value_apply, energy_apply=self.energy_apply)
    pol = {
      "net": golden_mlp_params(g, "params_before/sampler", 2),
      "log_sigma": jnp.asarray(g["params_before/sampler/log_betas"]),
    }
    np.testing.assert_allclose(self.policy.init_log_sigma(), g["params_before/sampler/log_betas"], rtol=1e-6)
    self.state = create_state(
      jax.random.key(0),
      TrainState.create(apply_fn=None, params=pol, tx=optax.sgd(lr)),
      TrainState.create(apply_fn=None, params=golden_mlp_params(g, "params_before/value", 3), tx=optax.sgd(lr)),
      dxmi.initial_velocity_scale(self.policy, self.cfg),
      TrainState.create(apply_fn=None, params=golden_mlp_params(g, "params_before/energy", 3), tx=optax.sgd(lr)),
    )
    self.noise = self._recorded_noise()

  def _recorded_noise(self):
    g, T, B = self.g, self.T, self.B
    perm_td, perm_pol = g["perm/update_f_v"], g["perm/update_sampler"]
    td_order = np.stack([[r % B for r in perm_td if r // B == t] for t in range(T)]).astype(np.int32)
    # TD step i (t = T-1-i) pops noise/td[i], row k for the k-th state in permutation order;
    # we resample in stored order, so stored row b gets the row of its position in td_order[t].
    resample = np.stack([g["noise/td"][T - 1 - t][np.argsort(td_order[t])] for t in range(T)])
    M = self.cfg.policy_minibatches
    return dxmi.StepNoise(
      x0=jnp.asarray(g["noise/rollout"][0]),
      rollout=jnp.asarray(g["noise/rollout"][1:]),
      policy_index=jnp.asarray(perm_pol[: M * B].reshape(M, B), jnp.int32),
      policy_noise=jnp.asarray(g["noise/sampler"]),
      td_order=jnp.asarray(td_order),
      resample=jnp.asarray(resample),
      dropout=jax.random.key(1),
    )

  def traj(self):
    return dxmi.rollout(self.policy, self.state.policy.params, self.noise.x0, self.noise.rollout)

  def energy(self, traj):
    return dxmi.energy_step(
      self.state.energy, self.energy_apply, jnp.asarray(self.g["data"]), traj.final, None, self.cfg
    )

  def through_td(self):
    traj = self.traj()
    s_new, _ = dxmi.avr_update(self.state.velocity_scale, traj, self.cfg.adavelreg)
    energy_state, _ = self.energy(traj)
    nexts = dxmi.resample_next_states(self.policy, self.state.policy.params, traj, self.noise.resample)
    ef = self.energy_apply(energy_state.params, nexts[self.T - 1], None)
    value_state, td = dxmi.td_value_scan(
      self.state.value,
      self.value_apply,
      traj,
      s_new,
      self.cfg,
      td_order=self.noise.td_order,
      energy_final=ef,
      next_states=nexts,
    )
    return traj, s_new, energy_state, value_state, td


@pytest.fixture(scope="module")
def problem():
  from conftest import golden_path  # pylint: disable=import-outside-toplevel

  return Problem(dict(np.load(golden_path(FILE))))


def test_anomaly_config_is_the_ev_trainer(problem):
  cfg = problem.cfg
  assert (cfg.separate_energy, cfg.value_resample, cfg.avr_init) == (True, True, "sigma")
  assert (cfg.gamma, cfg.time_cost_sig, cfg.time_cost, cfg.skip_sampler_tau) == (0.0, 0.0, 0.0, 0)
  assert (cfg.velocity_in_value, cfg.entropy_in_value) == (0, 0)
  assert (cfg.energy_grad_clip, cfg.value_grad_clip, cfg.policy_grad_clip) == (0.1, None, 0.1)
  assert cfg.policy_minibatches == int(problem.g["config/n_generator"])


def test_rollout_and_avr(problem):
  p, g = problem, problem.g
  traj = p.traj()
  _close(traj.states, g["rollout/states"][:-1], "states")
  _close(traj.next_states, g["rollout/states"][1:], "next states")
  # EV stores s = exp(log_betas) in the sampler's index order and reads it at T-1-t; we store
  # sampling order, so ours is the recording flipped.
  _close(p.state.velocity_scale, g["betas_for_q_init"][::-1], "s init")
  s_new, _ = dxmi.avr_update(p.state.velocity_scale, traj, p.cfg.adavelreg)
  _close(s_new, g["betas_for_q_after_avr"][::-1], "s after AVR")
  for j in range(p.T):
    _close(s_new[p.T - 1 - j], g[f"log/adavelreg/beta_for_q_{j}_"], f"logged beta_for_q_{j}")


def test_energy_step(problem):
  p, g = problem, problem.g
  traj = p.traj()
  x = jnp.concatenate([jnp.asarray(g["data"]), traj.final])
  _close(p.energy_apply(p.state.energy.params, x, None), g["energy/output"][:, 0], "energy output")
  energy_state, aux = p.energy(traj)
  _close(aux["d_loss"], g["log/ebm/d_loss_"], "d_loss (no gamma)")
  _close(aux["pos_e"], g["log/ebm/pos_e_"], "pos_e")
  _close(aux["neg_e"], g["log/ebm/neg_e_"], "neg_e")
  _close(aux["grad_norm"], g["energy/grad_norm"], "energy grad norm")
  for name, grad in torch_mlp_names(aux["grads_preclip"], 3).items():
    _close(grad, g[f"energy/grad_preclip/{name}"], f"energy grad {name}")
  coef = min(1.0, 0.1 / (float(g["energy/grad_norm"]) + 1e-6))
  assert coef < 1.0  # the clip is active in this recording
  for name, grad in torch_mlp_names(aux["grads"]).items():
    _close(grad, coef * g[f"energy/grad_preclip/{name}"], f"clipped energy grad {name}")
  for name, val in torch_mlp_names(energy_state.params).items():
    _close(val, g[f"energy/params_after/{name}"], f"energy params {name}")


def test_td_value_scan(problem):
  p, g = problem, problem.g
  _, _, _, _, td = p.through_td()
  order = np.asarray(p.noise.td_order)
  traj = p.traj()
  for i in range(p.T):
    t = p.T - 1 - i
    np.testing.assert_array_equal(g[f"td/{i}/timestep"], np.full(p.B, t))
    _close(np.asarray(traj.states[t])[order[t]], g[f"td/{i}/state"], f"TD t={t}: state")
    for ours, theirs in [
      ("running_cost", "running_cost"),
      ("v_xt", "v_xt"),
      ("target", "target"),
      ("v_loss", "v_loss"),
    ]:
      _close(td[ours][t], g[f"td/{i}/{theirs}"], f"TD t={t}: {ours}")
    for name, val in torch_mlp_names(jax.tree.map(lambda a: a[t], td["params_after"])).items():
      _close(val, g[f"td/{i}/value_params_after/{name}"], f"TD t={t} params {name}")
    _close(np.mean(td["running_cost"][t]), g[f"log/running_cost/step_{t}_"], f"logged running cost {t}")
  _close(td["v_loss"][0], g["log/ebm/v_loss_"], "logged v_loss (last TD step)")


def test_td_uses_resampled_next_states(problem):
  """The resampled x_{t+1} of each TD step, and f of the *resampled* x_T at t = T-1.

  With f of the stored x_T the t = T-1 target misses the recording (the bug this pins).
  """
  p, g = problem, problem.g
  traj, s_new, energy_state, _, _ = p.through_td()
  nexts = dxmi.resample_next_states(p.policy, p.state.policy.params, traj, p.noise.resample)
  order = np.asarray(p.noise.td_order)
  for i in range(p.T):
    t = p.T - 1 - i
    _close(np.asarray(nexts[t])[order[t]], g[f"td/{i}/next_state"], f"resampled next state t={t}")
  stored_ef = p.energy_apply(energy_state.params, traj.final, None)
  _, td_stored = dxmi.td_value_scan(
    p.state.value,
    p.value_apply,
    traj,
    s_new,
    p.cfg,
    td_order=p.noise.td_order,
    energy_final=stored_ef,
    next_states=nexts,
  )
  assert np.max(np.abs(np.asarray(td_stored["target"][p.T - 1]) - g["td/0/target"])) > 1e-4


def test_policy_update(problem):
  p, g = problem, problem.g
  traj, s_new, energy_state, value_state, _ = p.through_td()
  policy_state, aux = dxmi.policy_update(
    p.state.policy,
    p.policy,
    p.value_apply,
    value_state.params,
    traj,
    s_new,
    p.noise,
    p.cfg,
    energy_apply=p.energy_apply,
    energy_params=energy_state.params,
  )
  pre = "sampler/0"
  np.testing.assert_array_equal(aux["t"][0], g[f"{pre}/timestep"])
  _close(aux["state"][0], g[f"{pre}/state"], "minibatch states")
  _close(aux["next_state"][0], g[f"{pre}/next_state"], "minibatch next states")
  _close(aux["running_cost"][0], g[f"{pre}/running_cost"], "minibatch running cost")
  assert np.all(np.asarray(aux["non_terminal"][0]) == 1.0)  # no mask
  _close(aux["sampler_loss"][0], g["log/sampler/sampler_loss_"], "sampler loss")
  _close(jnp.mean(aux["value_term"][0]), g["log/sampler/sampler_value_loss_"], "value term")
  _close(jnp.mean(aux["running_cost"][0]), g["log/sampler/running_cost_"], "logged running cost")
  _close(jnp.mean(aux["causal_entropy"][0]), g["log/sampler/causal_entropy_"], "causal entropy")
  _close(aux["grad_norm"][0], g[f"{pre}/grad_norm"], "sampler grad norm")
  coef = min(1.0, 0.1 / (float(g[f"{pre}/grad_norm"]) + 1e-6))
  grads = jax.tree.map(lambda a: a[0], aux["grads"])
  _close(grads["log_sigma"], coef * g[f"{pre}/grad_preclip/log_betas"], "log_sigma grad")
  for name, val in torch_mlp_names(grads["net"], 2).items():
    _close(val, coef * g[f"{pre}/grad_preclip/{name}"], f"sampler grad {name}")
  _close(policy_state.params["log_sigma"], g[f"{pre}/params_after/log_betas"], "log_sigma after")
  for name, val in torch_mlp_names(policy_state.params["net"], 2).items():
    _close(val, g[f"{pre}/params_after/{name}"], f"sampler params {name}")
  for j in range(p.T):
    _close(jnp.exp(policy_state.params["log_sigma"][j]), g[f"log/beta/beta_{j}_"], f"logged beta_{j}")


def test_full_iteration_matches(problem):
  """dxmi_iteration (what train_step runs), jitted, reproduces the whole recorded iteration."""
  p, g = problem, problem.g
  it = jax.jit(lambda s, b, n: dxmi.dxmi_iteration(s, b, n, p.nets, p.cfg))
  new_state, aux = it(p.state, {"x": jnp.asarray(g["data"])}, p.noise)
  for name, val in torch_mlp_names(new_state.energy.params).items():
    _close(val, g[f"energy/params_after/{name}"], f"energy {name}")
  for name, val in torch_mlp_names(new_state.value.params).items():
    _close(val, g[f"td/{p.T - 1}/value_params_after/{name}"], f"value {name}")
  for name, val in torch_mlp_names(new_state.policy.params["net"], 2).items():
    _close(val, g[f"sampler/0/params_after/{name}"], f"sampler {name}")
  _close(new_state.policy.params["log_sigma"], g["sampler/0/params_after/log_betas"], "log_sigma")
  _close(new_state.velocity_scale, g["betas_for_q_after_avr"][::-1], "s")
  metrics, _ = dxmi.iteration_metrics(new_state, aux)
  for ours, theirs in [
    ("ebm/d_loss", "ebm/d_loss_"),
    ("ebm/v_loss", "ebm/v_loss_"),
    ("ebm/running_cost", "ebm/running_cost_"),
    ("sampler/sampler_loss", "sampler/sampler_loss_"),
  ]:
    _close(metrics[ours], g[f"log/{theirs}"], f"metric {ours}")


def test_default_avr_init_is_the_policys():
  """avr_init="policy" (every other trainer) keeps the policy's own s (eta reversed for VAR)."""
  pol = ResidualPolicy(TimeMLP(out_dim=2, hidden=(4,)), 5, ETA)
  cfg = dxmi.DxMIConfig(num_steps=5)
  np.testing.assert_allclose(dxmi.initial_velocity_scale(pol, cfg), ETA[::-1].astype(np.float32))
  np.testing.assert_allclose(
    dxmi.initial_velocity_scale(pol, dataclasses.replace(cfg, avr_init="sigma")),
    np.sqrt(ETA).astype(np.float32),
    rtol=1e-6,
  )
  with pytest.raises(ValueError, match="avr_init"):
    dxmi.DxMIConfig(num_steps=5, avr_init="bogus")
