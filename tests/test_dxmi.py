"""dxmi.py on the 2D problem: rollout shapes, the iteration, tracing, devices, end to end."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, TINY, TINY_WIDE, run_with_fake_devices, tiny_config
from dxmi_jax import dxmi, experiment, modes, parallel, train
from dxmi_jax.evaluators.vector import VectorEvaluator
from dxmi_jax.metrics import vector

T, B = TINY["policy__num_steps"], TINY["training__batch_size"]


@pytest.fixture(scope="module")
def exp():
  return experiment.build(tiny_config(**TINY_WIDE))


def test_rollout_shapes_and_finite(exp):
  state = jax.jit(exp.init_state)(jax.random.PRNGKey(0))
  noise = dxmi.draw_noise(jax.random.PRNGKey(1), exp.data_shape, exp.dxmi, exp.policy)
  traj = jax.jit(lambda p, x0, n: dxmi.rollout(exp.policy, p, x0, n))(state.policy.params, noise.x0, noise.rollout)
  chex.assert_shape([traj.states, traj.next_states, traj.means], (T, B, 2))
  chex.assert_shape([traj.sigmas, traj.log_sigmas], (T, B))
  chex.assert_tree_all_finite(traj)
  # the chain is consistent: x_{t+1} of step t is x_t of step t+1, and x_0 is the prior draw
  np.testing.assert_array_equal(traj.states[1:], traj.next_states[:-1])
  np.testing.assert_array_equal(traj.states[0], noise.x0)
  # the last VAR step uses the fixed std 0.001 (fix_last)
  np.testing.assert_allclose(traj.sigmas[-1], 1e-3, rtol=1e-6)


class TestIteration(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_matches_eager(self):
    exp = experiment.build(tiny_config(**TINY_WIDE))
    state = exp.init_state(jax.random.PRNGKey(0))
    batch = {"x": jnp.asarray(exp.data.local_batch(0)["x"])}
    noise = dxmi.draw_noise(jax.random.PRNGKey(1), exp.data_shape, exp.dxmi, exp.policy)
    fn = self.variant(lambda s, b, n: dxmi.dxmi_iteration(s, b, n, exp.nets, exp.dxmi))
    new_state, aux = fn(state, batch, noise)
    chex.assert_tree_all_finite(new_state)
    chex.assert_trees_all_equal_shapes(new_state.policy.params, state.policy.params)
    chex.assert_trees_all_equal_shapes(new_state.value.params, state.value.params)
    ref_state, _ = jax.jit(lambda s, b, n: dxmi.dxmi_iteration(s, b, n, exp.nets, exp.dxmi))(state, batch, noise)
    chex.assert_trees_all_close(new_state.policy.params, ref_state.policy.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(new_state.value.params, ref_state.value.params, rtol=1e-5, atol=1e-6)
    # the iteration moved every network
    assert not np.allclose(new_state.value.params["dense_0"]["kernel"], state.value.params["dense_0"]["kernel"])
    assert not np.allclose(
      new_state.policy.params["net"]["dense_0"]["kernel"], state.policy.params["net"]["dense_0"]["kernel"]
    )
    chex.assert_shape(aux["td"]["target"], (T, B))


def test_train_step_traces_once(exp):
  mesh = parallel.make_mesh()
  raw = dxmi.make_train_step(exp.nets, exp.dxmi, exp.data_shape, exp.perf, parallel.ShardingRules(mesh))
  counted = chex.assert_max_traces(raw, n=1)
  # jitted exactly as train.compile_train_step does it (explicit in/out shardings)
  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  step = jax.jit(counted, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=(0,))
  state = train.initial_state(exp, mesh)
  for i in range(4):
    state, metrics = step(state, parallel.global_batch_from_local(exp.data.local_batch(i), mesh))
  assert int(state.step) == 4
  chex.assert_tree_all_finite(metrics)
  chex.assert_shape(metrics["value/step"], (T,))


def test_separate_energy_variant_runs():
  """The anomaly-detection trainer: separate energy, time-dependent value, full recursion in V."""
  exp = experiment.build(
    tiny_config(
      **TINY_WIDE,
      dxmi__separate_energy=True,
      dxmi__gamma=0.0,
      dxmi__velocity_in_value=0,
      dxmi__entropy_in_value=0,
      dxmi__time_cost_sig=0.0,
      dxmi__value_resample=True,
      optim__energy_grad_clip=0.1,
    )
  )
  step = jax.jit(dxmi.make_train_step(exp.nets, exp.dxmi, exp.data_shape))
  state = exp.init_state(jax.random.PRNGKey(0))
  assert state.energy is not None
  new, metrics = step(state, {"x": jnp.asarray(exp.data.local_batch(0)["x"])})
  chex.assert_tree_all_finite(new)
  assert not np.allclose(new.energy.params["dense_0"]["kernel"], state.energy.params["dense_0"]["kernel"])
  assert "weight_norm/energy" in metrics


_DEVICE_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp
sys.path[:0] = [{repo!r}, {repo!r} + "/tests"]
from conftest import TINY_WIDE, tiny_config
from dxmi_jax import experiment, parallel, train, writers
exp = experiment.build(tiny_config(**TINY_WIDE))
mesh = parallel.make_mesh()
state = train.initial_state(exp, mesh)
step = train.compile_train_step(exp, mesh)
out = []
for i in range(5):
  state, m = step(state, parallel.global_batch_from_local(exp.data.local_batch(i), mesh))
  out.append(writers.flatten_metrics(parallel.to_host(m)))
print("RESULT" + json.dumps({{"devices": jax.device_count(), "metrics": out}}))
"""


def _run_devices(n):
  return run_with_fake_devices(_DEVICE_SCRIPT.format(repo=str(REPO)), n, timeout=600)


def test_one_vs_eight_devices_same_metrics():
  one, eight = _run_devices(1), _run_devices(8)
  assert one["devices"] == 1 and eight["devices"] == 8
  for step, (a, b) in enumerate(zip(one["metrics"], eight["metrics"])):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=f"step {step + 1}: {k}")


def test_end_to_end_2d_improves_sw(tmp_path):
  c = tiny_config(
    **dict(
      TINY_WIDE,
      training__num_iters=400,
      training__log_every=100,
      training__checkpoint_every=400,
      policy__net__hidden=(64, 64),
      value__hidden=(64, 64),
      optim__policy_lr=2e-3,
      optim__policy_sigma_lr=1e-2,
      optim__value_lr=2e-3,
    )
  )
  exp = experiment.build(c)
  untrained = VectorEvaluator(exp)(exp.init_state(jax.random.PRNGKey(c.training.seed)), 0)
  final = modes.run(c, str(tmp_path), "train")
  assert final["sw"] < 0.6 * untrained["sw"], (final, untrained)
  assert final["auc"] > 0.75, final
  recs = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert recs[-1]["kind"] == "eval" and "sw" in recs[-1] and "auc" in recs[-1]
  assert (tmp_path / "figure.png").stat().st_size > 1000
  assert any(n.isdigit() for n in os.listdir(tmp_path / "checkpoints"))
  # --mode=sample and --mode=eval restore the latest checkpoint
  c.sample.num, c.sample.batch_size = 300, 100
  modes.run(c, str(tmp_path), "sample")
  with np.load(tmp_path / "samples.npz") as z:
    assert z["arr_0"].dtype == np.float32 and z["arr_0"].shape == (300, 2)
    assert vector.sliced_wasserstein(z["arr_0"], exp.data.data.sample(300, seed=1), 200) < untrained["sw"]
  again = modes.run(c, str(tmp_path), "eval")
  assert again["sw"] == pytest.approx(final["sw"]) and again["auc"] == pytest.approx(final["auc"])
  assert json.loads(open(tmp_path / "eval" / "metrics.jsonl").readline())["step"] == 400
