"""Devices, mesh and shardings: one 1-D data mesh over every device of every host.

The train step is written for the *global* batch and compiled once with
``jax.jit``; batch-major arrays are sharded along the "data" axis, so XLA inserts the
gradient all-reduces.  Parameters and optimiser states are replicated, or, with
``config.training.fsdp``, split over the same axis (``state_shardings``).  The same program runs on
1 CPU, 8 GPUs or a multi-host TPU pod; results depend on the device count only
through floating-point reduction order.

The algorithm (dxmi.py) names no mesh: it receives a ``ShardingRules`` and calls its
constraints at the few places where the layout matters.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Tuple

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def distributed_settings_from_env(env=None):
  """(coordinator, num_processes, process_id) from DXMI_* variables, or None if unset.

  Raises ValueError naming the variable when they are incomplete or malformed.
  """
  env = os.environ if env is None else env
  coord = env.get("DXMI_COORDINATOR", "")
  if not coord:
    return None
  if ":" not in coord:
    raise ValueError(f"DXMI_COORDINATOR: expected host:port, got {coord!r}")
  vals = {}
  for name in ("DXMI_NUM_PROCESSES", "DXMI_PROCESS_ID"):
    raw = env.get(name, "")
    try:
      vals[name] = int(raw)
    except ValueError:
      raise ValueError(f"{name}: expected an integer when DXMI_COORDINATOR is set, got {raw!r}") from None
  n, i = vals["DXMI_NUM_PROCESSES"], vals["DXMI_PROCESS_ID"]
  if n < 1 or not 0 <= i < n:
    raise ValueError(f"DXMI_PROCESS_ID={i} / DXMI_NUM_PROCESSES={n}: expected 0 <= id < num_processes")
  return coord, n, i


def _auto_detect_multiprocess() -> bool:
  env = os.environ
  if env.get("DXMI_DISTRIBUTED", "") not in ("", "0"):
    return True
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if env.get(key, "1").isdigit() and int(env.get(key, "1")) > 1:
      return True
  return "," in env.get("TPU_WORKER_HOSTNAMES", "")  # a multi-host Cloud TPU slice


def maybe_initialize_distributed():
  """``jax.distributed.initialize()`` when launched as several processes.

  Either explicit: DXMI_COORDINATOR=host:port (process 0's address, a free port),
  DXMI_NUM_PROCESSES and DXMI_PROCESS_ID in every process; or JAX's cluster
  auto-detection, used with DXMI_DISTRIBUTED=1 (e.g. every host of a TPU pod
  slice) and automatically under multi-task SLURM / Open MPI jobs and when
  TPU_WORKER_HOSTNAMES lists several hosts.  Must run before
  anything touches a JAX backend.  Raises ValueError for malformed DXMI_* values.
  """
  if jax.distributed.is_initialized():
    return
  settings = distributed_settings_from_env()
  if settings is not None:
    coord, n, i = settings
    jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=i)
  elif _auto_detect_multiprocess():
    jax.distributed.initialize()  # cluster auto-detection (Cloud TPU, SLURM, Open MPI, ...)
  else:
    return
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def make_mesh(devices=None) -> Mesh:
  """The one data mesh: a 1-D ``"data"`` axis over ``devices`` (default: every device of every host)."""
  return Mesh(np.asarray(list(devices) if devices is not None else jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  return NamedSharding(mesh, P(*([None] * batch_axis + [DATA_AXIS])))


def process_slice(global_batch: int):
  """The [start, stop) rows of the global batch this process feeds."""
  per = global_batch // jax.process_count()
  start = jax.process_index() * per
  return start, start + per


def global_batch_from_local(local_tree, mesh: Mesh):
  """Assembles the per-process slices into one global, data-sharded array tree."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_tree)


def replicate(tree, mesh: Mesh):
  """Host values (numpy or single-device arrays, equal on every process) -> replicated global arrays."""
  sharding = replicated(mesh)

  def one(a):
    a = np.asarray(jax.device_get(a))
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

  return jax.tree.map(one, tree)


def check_same_on_all_processes(value: int, what: str):
  """Raises ValueError if processes disagree on ``value`` (every process must call this)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  values = np.asarray(multihost_utils.process_allgather(np.asarray(value, np.int32))).reshape(-1)
  if np.any(values != values[0]):
    raise ValueError(f"{what} differs between processes: {values.tolist()} (process 0, 1, ...)")


def to_host(tree):
  """Fully-replicated (or addressable) arrays -> numpy on every process."""
  return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)


# ------------------------------------------------------------------------- FSDP
#: leaves with fewer elements than this stay replicated under FSDP (biases, norms, scalars)
FSDP_MIN_SIZE = 2**16


def fsdp_spec(shape, num_devices: int, min_size: int = FSDP_MIN_SIZE) -> P:
  """Shards the largest axis of a big leaf that the device count divides; else replicated.

  Ties go to the last such axis (the output channels of a conv / dense kernel).
  """
  size = int(np.prod(shape)) if len(shape) else 1
  if num_devices == 1 or size < min_size:
    return P()
  candidates = [i for i, d in enumerate(shape) if d % num_devices == 0]
  if not candidates:
    return P()
  axis = max(candidates, key=lambda i: (shape[i], i))
  return P(*([None] * axis + [DATA_AXIS]))


def state_shardings(abstract_state, mesh: Mesh, fsdp: bool = False, min_size: int = FSDP_MIN_SIZE):
  """NamedShardings of a state tree: all replicated, or FSDP-sharded over the data axis.

  With ``fsdp`` every big parameter and optimiser-state leaf is split along one axis
  over the data devices (``fsdp_spec``): each device holds 1/N of it, and the train
  step gathers the parameters for compute (``ShardingRules.gather_params``) while gradients
  arrive reduce-scattered into the same layout.  The values are those of the
  replicated run; only where they live changes.
  """
  n = mesh.shape[DATA_AXIS]
  if not fsdp:
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  return jax.tree.map(lambda a: NamedSharding(mesh, fsdp_spec(a.shape, n, min_size)), abstract_state)


# ------------------------------------------------------------------------ rules
#: logical axis -> mesh axis, as big_vision's ``config.sharding_rules``: the algorithm names
#: the logical axis of an array ("batch"), these rules say which mesh axis splits it.  A
#: logical axis that no rule names is replicated.
DEFAULT_RULES: Tuple[Tuple[str, Optional[str]], ...] = (("batch", DATA_AXIS),)


@dataclasses.dataclass(frozen=True, eq=False)
class ShardingRules:
  """Where the train step's arrays live, as the functions the algorithm calls.

  ``mesh``: the device mesh, or None (one device, or no constraint: every method is the
  identity).  ``param_shardings``: a tree like the train state of the shardings it is
  stored with (``state_shardings``, e.g. FSDP's), or None (replicated, nothing to gather).
  ``rules``: logical axis -> mesh axis (``DEFAULT_RULES``).

  * ``constrain(tree, batch_axis)``: every array of ``tree`` with more than ``batch_axis``
    dimensions is split along its axis ``batch_axis`` (the logical "batch") over the data
    devices; the rest of its axes are replicated.
  * ``gather_params(state)``: the parameters of a DxMIState replicated for compute (under
    FSDP: all-gathered, once per iteration); identity without ``param_shardings``.
  * ``stored(state)``: the state constrained back to ``param_shardings`` (gradients arrive
    reduce-scattered into it); identity without them.
  """

  mesh: Optional[Mesh] = None
  param_shardings: Any = None
  rules: Tuple[Tuple[str, Optional[str]], ...] = DEFAULT_RULES

  def spec(self, *logical_axes: Optional[str]) -> P:
    """The PartitionSpec of an array whose axes have these logical names (None: unnamed)."""
    table = dict(self.rules)
    return P(*(None if name is None else table.get(name) for name in logical_axes))

  def sharding(self, *logical_axes: Optional[str]) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(*logical_axes))

  def constrain(self, tree, batch_axis: int):
    if self.mesh is None:
      return tree
    sharding = self.sharding(*([None] * batch_axis + ["batch"]))
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding) if a.ndim > batch_axis else a, tree)

  def gather_params(self, state):
    if self.mesh is None or self.param_shardings is None:
      return state
    repl = self.sharding()
    gather = lambda ts: (
      None
      if ts is None
      else ts.replace(params=jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, repl), ts.params))
    )
    return state.replace(policy=gather(state.policy), value=gather(state.value), energy=gather(state.energy))

  def stored(self, state):
    if self.param_shardings is None:
      return state
    # by leaf order: every abstract_state() call builds new optimiser objects (pytree metadata)
    shardings = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(self.param_shardings))
    return jax.tree.map(jax.lax.with_sharding_constraint, state, shardings)


def peak_memory_bytes():
  """The largest allocator peak (``peak_bytes_in_use``) over the local devices, for benchmarks;
  None where the backend keeps no such statistics (the CPU)."""
  peaks = []
  for d in jax.local_devices():
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None
