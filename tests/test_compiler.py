"""config.perf.cpu_dots reaches the compiled programs (compiler.py)."""

import jax
import pytest

from conftest import tiny_config
from dxmi_jax import compiler, experiment, parallel, train


def test_options_resolve_per_backend():
  perf = tiny_config().perf
  assert perf.cpu_dots == "auto"
  assert compiler.options(perf, backend="cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
  assert compiler.options(perf, backend="gpu") is None  # XLA:CPU options only on the CPU
  perf.cpu_dots = "ynnpack"
  assert compiler.options(perf, backend="cpu") is None
  perf.cpu_dots = "mkl"
  with pytest.raises(ValueError, match=r"config\.perf\.cpu_dots: expected one of"):
    compiler.options(perf, backend="cpu")
  assert compiler.cache_key({"b": "1", "a": ""}) == (("a", ""), ("b", "1"))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's dot library")
def test_train_step_is_compiled_with_the_chosen_dot_library():
  texts = {}
  for mode in ("eigen", "ynnpack"):
    exp = experiment.build(tiny_config(training__batch_size=16, policy__net__hidden=(32, 32), perf__cpu_dots=mode))
    mesh = parallel.make_mesh()
    state = train.initial_state(exp, mesh)
    batch = parallel.global_batch_from_local(exp.data.local_batch(0), mesh)
    texts[mode] = train.compile_train_step(exp, mesh).lower(state, batch).compile().as_text()
  assert "__ynn_fusion" not in texts["eigen"]
  assert "__ynn_fusion" in texts["ynnpack"]
