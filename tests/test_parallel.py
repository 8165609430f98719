"""Data parallelism of the compiled train step, read from XLA's own cost and memory analysis.

One subprocess with 8 fake CPU devices compiles the 2D train step (every policy
minibatch of the ImageNet trainer, M = T) on a 1-device mesh and on the 8-device
mesh.  If any batch-sized stage ran replicated -- as the policy update did when its
minibatch rows were gathered with replicated indices -- each device would compute
more than its eighth and the per-device FLOP ratio would rise well above 1/8.
"""

import numpy as np
import pytest

from conftest import REPO, run_with_fake_devices

_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
sys.path[:0] = [{repo!r}, {repo!r} + "/tests"]
from conftest import TINY_WIDE, tiny_config
from dxmi_jax import experiment, parallel, train

def analyse(exp, mesh):
  abstract = exp.abstract_state()
  st = train.state_shardings(exp, mesh, abstract)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, st)
  batch = {{"x": jax.ShapeDtypeStruct(exp.data_shape, jnp.float32, sharding=parallel.batch_sharding(mesh))}}
  compiled = train.compile_train_step(exp, mesh).lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  return {{"flops": float(cost["flops"]), "temp": int(mem.temp_size_in_bytes),
          "args": int(mem.argument_size_in_bytes)}}

out = {{}}
big = dict(TINY_WIDE, training__batch_size=256, dxmi__policy_minibatches=3, policy__net__hidden=(64, 64),
           value__hidden=(64, 64))
exp = experiment.build(tiny_config(**big))
one, eight = Mesh(np.asarray(jax.devices()[:1]), ("data",)), parallel.make_mesh()
out["one"], out["eight"] = analyse(exp, one), analyse(exp, eight)
fsdp = experiment.build(tiny_config(**big, training__fsdp=True, training__fsdp_min_size=1024))
out["eight_fsdp"] = analyse(fsdp, eight)

# FSDP changes where the state lives, not what it is: two steps against the replicated run
results = []
for e in (exp, fsdp):
  state, step = train.initial_state(e, eight), train.compile_train_step(e, eight)
  for i in range(2):
    state, m = step(state, parallel.global_batch_from_local(e.data.local_batch(i), eight))
  kernel = state.policy.params["net"]["dense_0"]["kernel"]
  results.append((parallel.to_host(state.policy.params), parallel.to_host(state.value.opt_state),
                  float(m["sampler/sampler_loss"]), str(kernel.sharding.spec)))
out["same_params"] = max(float(np.max(np.abs(a - b))) for a, b in
                         zip(jax.tree.leaves(results[0][:2]), jax.tree.leaves(results[1][:2])))
out["losses"] = [results[0][2], results[1][2]]
out["kernel_spec"] = [results[0][3], results[1][3]]
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def analysis():
  return run_with_fake_devices(_SCRIPT.format(repo=str(REPO)), 8, timeout=900)


def test_every_batch_stage_is_split_over_eight_devices(analysis):
  """Per-device FLOPs at 8 devices ~ 1/8 of the 1-device program (a replicated policy update: ~0.5)."""
  ratio = analysis["eight"]["flops"] / analysis["one"]["flops"]
  assert ratio <= 0.16, f"per-device FLOPs 8 vs 1 device: {ratio:.3f}x (ideal 0.125)"
  temp = analysis["eight"]["temp"] / analysis["one"]["temp"]
  assert temp <= 0.5, f"per-device temporaries 8 vs 1 device: {temp:.3f}x"


def test_fsdp_shards_the_state_and_keeps_the_values(analysis):
  assert "data" not in analysis["kernel_spec"][0] and "data" in analysis["kernel_spec"][1]
  # the arguments (the state) shrink: the big kernels and their Adam moments are split 8 ways
  assert analysis["eight_fsdp"]["args"] < 0.5 * analysis["eight"]["args"]
  assert analysis["same_params"] < 1e-6
  np.testing.assert_allclose(analysis["losses"][1], analysis["losses"][0], rtol=1e-6)
