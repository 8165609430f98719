"""The evaluators (evaluators/): training-time image evaluation builds its sampler once per run."""

import jax

from conftest import tiny_image_experiment
from dxmi_jax import generation
from dxmi_jax.evaluators.images import ImageEvaluator


class _Writer:
  def __init__(self):
    self.images = []

  def image(self, name, img, step):
    self.images.append((name, img.shape, step))


def test_two_evaluations_trace_the_sampler_once(tmp_path, monkeypatch):
  traces = []

  def counting_generate(*args, **kwargs):  # Python runs this at trace time only; each trace compiles
    traces.append(1)
    return real_generate(*args, **kwargs)

  real_generate = generation.generate
  monkeypatch.setattr(generation, "generate", counting_generate)  # make_generator binds it when called
  exp = tiny_image_experiment()
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
