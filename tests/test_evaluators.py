"""Training-time evaluation builds its sampler once per run, and the sampler is split over the mesh."""

import jax

from dxmi_jax import experiment, generation, parallel
from dxmi_jax.evaluators.images import ImageEvaluator


class _Writer:
  def __init__(self):
    self.images = []

  def image(self, name, img, step):
    self.images.append((name, img.shape, step))


def _smoke_exp():
  from configs import cifar10  # pylint: disable=import-outside-toplevel

  c = cifar10.get_config("smoke")
  c.policy.num_steps = 2
  c.data.image_size = c.policy.net.resolution = 8  # a tiny UNet of the same family: a quick compile
  c.policy.net.ch_mult, c.policy.net.attn_resolutions = (1,), (8,)
  return experiment.build(c)


def test_two_evaluations_trace_the_sampler_once(tmp_path, monkeypatch):
  traces = []

  def counting_generate(*args, **kwargs):  # Python runs this at trace time only; each trace compiles
    traces.append(1)
    return real_generate(*args, **kwargs)

  real_generate = generation.generate
  monkeypatch.setattr(generation, "generate", counting_generate)  # make_generator binds it when called
  exp = _smoke_exp()
  state = jax.jit(exp.init_state)(jax.random.PRNGKey(0))
  writer = _Writer()
  evaluator = ImageEvaluator(exp)
  evaluator(state, 10, final=False, workdir=str(tmp_path), writer=writer)
  first = len(traces)
  state = state.replace(step=state.step + 1)  # a later evaluation, same shapes
  evaluator(state, 20, final=True, workdir=str(tmp_path), writer=writer)
  assert first == 1, "the first evaluation traced its sampler more than once"
  assert len(traces) == first, "the second evaluation traced (and compiled) the sampler again"
  assert [s for _, _, s in writer.images] == [10, 20]
  assert (tmp_path / "samples_grid.png").exists()


def test_generator_is_cached_and_sharded():
  exp = _smoke_exp()
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
