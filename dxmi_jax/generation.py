"""Generation with a trained policy: batched, jitted, sharded over the data mesh.

Optional value guidance (reference §8 item 21).  After each policy step

    x_{t+1} <- x_{t+1} - g * sigma_t * grad_x V(x_{t+1}, t+1)

i.e. a step *down* the learned cost (V is a cost-to-go and V(., T) the energy:
low means likely data).  The official ``sample_guidance`` adds the gradient,
x_{t+1} + g sigma_t grad V, which for g > 0 climbs the cost; the intended sign is
not stated in the sources.  ``guidance_sign`` chooses: "descend" (ours, the default,
the sign that agrees with the method's definition of V) or "official" (the released
code's).  ``guidance_scale = 0`` (the default) is plain sampling.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dxmi_jax import compiler
from dxmi_jax import image_export


def generate(
  policy,
  policy_params,
  key,
  num: int,
  sample_shape,
  y=None,
  *,
  value_apply: Optional[Callable] = None,
  value_params=None,
  guidance_scale: float = 0.0,
  guidance_sign: str = "descend",
  batch_sharding=None,
):
  """num samples x_T (num, *sample_shape); pure function of (params, key, y).

  ``batch_sharding``: a sharding of the sample axis (e.g. the data mesh); every
  batch-sized array is constrained to it, so each device draws and denoises only
  its num / n samples.  The values do not depend on it.
  """
  shard = (lambda a: a) if batch_sharding is None else (lambda a: jax.lax.with_sharding_constraint(a, batch_sharding))
  direction = guidance_direction(guidance_sign)
  T = policy.num_steps
  k0, kn = jax.random.split(key)
  x = shard(policy.prior(k0, (num,) + tuple(sample_shape)))
  y = None if y is None else shard(y)

  def body(x, t):
    eps = shard(jax.random.normal(jax.random.fold_in(kn, t), x.shape, jnp.float32))
    tb = jnp.full((num,), t, jnp.int32)
    out = policy.step(policy_params, x, t, eps, y)
    x_next = out.sample
    if guidance_scale:
      grad = jax.grad(lambda z: jnp.sum(value_apply(value_params, z, tb + 1, y)))(x_next)
      x_next = x_next + direction * guidance_scale * out.sigma.reshape((-1,) + (1,) * (x.ndim - 1)) * grad
    return shard(x_next), None

  x, _ = jax.lax.scan(body, x, jnp.arange(T, dtype=jnp.int32))
  return x


GUIDANCE_SIGNS = {"descend": -1.0, "official": 1.0}


def guidance_direction(sign: str) -> float:
  """-1 for "descend" (x - g sigma grad V), +1 for "official" (x + g sigma grad V)."""
  if sign not in GUIDANCE_SIGNS:
    raise ValueError(f"config.sample.guidance_sign: expected one of {sorted(GUIDANCE_SIGNS)}, got {sign!r}")
  return GUIDANCE_SIGNS[sign]


#: make_generator's jitted samplers, by their static arguments: one trace and compile per run
_GENERATORS = {}


def make_generator(
  policy,
  sample_shape,
  batch_size: int,
  mesh=None,
  *,
  value_apply=None,
  guidance_scale: float = 0.0,
  guidance_sign: str = "descend",
  compiler_options=None,
):
  """Returns gen(policy_params, key, y=None, value_params=None) -> (batch_size, ...) jitted.

  The same arguments give the same jitted function (cached for the process), so a
  training run that evaluates every few hundred steps traces and compiles its
  sampler once, not at every evaluation.  With a mesh the samples are split over
  its "data" axis (``generate``'s ``batch_sharding``): generation time falls with
  the device count.
  """
  key = (
    id(policy),
    tuple(sample_shape),
    batch_size,
    mesh,
    id(value_apply),
    float(guidance_scale),
    guidance_sign,
    compiler.cache_key(compiler_options),
  )
  hit = _GENERATORS.get(key)
  if hit is not None:
    return hit[-1]
  data = None if mesh is None else NamedSharding(mesh, P("data"))
  fn = functools.partial(
    generate,
    policy,
    num=batch_size,
    sample_shape=tuple(sample_shape),
    value_apply=value_apply,
    guidance_scale=guidance_scale,
    guidance_sign=guidance_sign,
    batch_sharding=data,
  )

  def gen(params, key, y=None, value_params=None):
    return fn(params, key, y=y, value_params=value_params)

  shardings = {} if mesh is None else {"out_shardings": data}
  jitted = jax.jit(gen, compiler_options=compiler_options, **shardings)
  # the policy and value_apply are kept alive with the entry, so their ids stay unique
  _GENERATORS[key] = (policy, value_apply, jitted)
  return jitted


def sample_many(gen, params, seed: int, num: int, batch_size: int, labels=None, value_params=None):
  """Runs ``gen`` over ceil(num / batch_size) keys fold_in(seed, i); returns numpy (num, ...)."""
  base = jax.random.PRNGKey(seed)
  outs = []
  for i in range(-(-num // batch_size)):
    y = None if labels is None else jnp.asarray(labels[i * batch_size : (i + 1) * batch_size])
    if y is not None and y.shape[0] < batch_size:  # pad the last label batch
      y = jnp.concatenate([y, jnp.zeros((batch_size - y.shape[0],), y.dtype)])
    outs.append(_to_numpy(gen(params, jax.random.fold_in(base, i), y, value_params)))
  return np.concatenate(outs)[:num]


def _to_numpy(x):
  """The whole array on every process (a data-sharded output spans hosts under jax.distributed)."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ------------------------------------------------------------- image experiments
def sample_labels(exp, num: int, seed: int):
  """config.sample.labels cycled, or uniform random labels (reference §2h), or None."""
  if not exp.class_cond:
    return None
  spec = exp.config.sample.labels
  if spec:
    fixed = np.array([int(v) for v in spec.split(",")], np.int32)
    return np.resize(fixed, num)
  return np.random.default_rng(seed).integers(0, exp.num_classes, size=num).astype(np.int32)


def generation_batch(exp, num: int) -> int:
  """The generation batch for ``num`` samples: config.sample.batch_size, or less for a small num."""
  bs = min(exp.config.sample.batch_size, max(num, jax.device_count()))
  return bs - bs % jax.device_count()


def experiment_generator(exp, batch_size: int, mesh=None):
  """``make_generator`` for an experiment: its policy, value guidance (config.sample) and
  compiler options (config.perf)."""
  sc = exp.config.sample
  return make_generator(
    exp.policy,
    exp.data_shape[1:],
    batch_size,
    mesh,
    value_apply=exp.nets.value_apply,
    guidance_scale=sc.guidance_scale,
    guidance_sign=sc.guidance_sign,
    compiler_options=compiler.options(exp.config.perf),
  )


def generate_images(exp, state, num: int, seed: int, mesh=None, labels=None, batch_size=None):
  """(uint8 NHWC samples, labels or None) from the current policy.

  ``mesh``: split the generation over its data axis.  ``batch_size``: the generation
  batch (default ``generation_batch``); the jitted sampler is cached per batch size.
  """
  sc = exp.config.sample
  bs = batch_size or generation_batch(exp, num)
  labels = sample_labels(exp, num, seed) if labels is None else labels
  gen = experiment_generator(exp, bs, mesh)
  x = sample_many(gen, state.policy.params, seed, num, bs, labels=labels, value_params=state.value.params)
  return image_export.to_uint8(x, sc.rounding), labels
