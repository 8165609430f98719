"""XLA compiler options of our compiled programs, from ``config.perf``.

``config.perf.cpu_dots`` chooses the library XLA:CPU runs matrix products with:

* ``"eigen"``: Eigen's matrix product, split over the intra-op thread pool (XLA's
  CPU dot emitter before YNNPACK).  Set with the compiler option
  ``xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK fusions).
* ``"ynnpack"``: XLA's own default in jax 0.10: dots, and the elementwise work fused
  around them, become YNNPACK fusions.  For the shapes of our CPU configs (a
  512x128x128 MLP layer, im2col products of 8x8 images at batch 32) each runs on one
  thread, so one of the two cores idles.
* ``"auto"`` (the default): ``eigen`` when the default backend is the CPU; nothing is
  set on other backends (the options are XLA:CPU's).

Measured on a 2-core AVX2 machine, both compiled in one process and timed alternately
(``benchmarks/step_time.py --compare=cpu_dots=ynnpack``, ``compared`` in
results/step_time_*.json, docs/speed.md): the digits iteration 0.655 s with YNNPACK,
0.370 s with Eigen; the 2D iteration 24.0 -> 17.1 ms.  The two give the same numbers up
to float32 rounding (another summation order inside each product).

Options are passed per program (``jax.jit(..., compiler_options=...)``), so they reach
exactly the train step, the pretraining step and the sampler, are part of the
persistent compilation cache key, and leave every other jitted function of the
process (and of the tests) as XLA compiles it by default.
"""

from __future__ import annotations

from typing import Dict, Optional

import jax

CPU_DOTS = ("auto", "eigen", "ynnpack")


def resolved_cpu_dots(mode: str, backend: Optional[str] = None) -> str:
  """``mode`` with ``auto`` resolved for ``backend`` (default: jax's default backend)."""
  if mode not in CPU_DOTS:
    raise ValueError(f"config.perf.cpu_dots: expected one of {CPU_DOTS}, got {mode!r}")
  if mode != "auto":
    return mode
  return "eigen" if (backend or jax.default_backend()) == "cpu" else "ynnpack"


def options(perf, backend: Optional[str] = None) -> Optional[Dict[str, str]]:
  """The compiler options for ``config.perf`` (None when XLA's defaults apply)."""
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return None
  if resolved_cpu_dots(perf.get("cpu_dots", "auto"), backend) == "eigen":
    return {"xla_cpu_experimental_ynn_fusion_type": ""}
  return None


def cache_key(opts: Optional[Dict[str, str]]):
  """A hashable form of ``options``' result (for caches of jitted functions)."""
  return tuple(sorted((opts or {}).items()))
