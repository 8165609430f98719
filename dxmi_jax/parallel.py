"""Devices, mesh and shardings: one 1-D data mesh over every device of every host.

The train step is written for the *global* batch and compiled once with
``jax.jit``; parameters are replicated and batch-major arrays are sharded along
the "data" axis, so XLA inserts the gradient all-reduces.  The same program runs on
1 CPU, 8 GPUs or a multi-host TPU pod; results depend on the device count only
through floating-point reduction order.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed():
  """``jax.distributed.initialize()`` when launched as several processes.

  Auto-detected on TPU pods and SLURM/Open MPI; elsewhere set
  DXMI_COORDINATOR=host:port, DXMI_NUM_PROCESSES and DXMI_PROCESS_ID.
  """
  if jax.distributed.is_initialized():
    return
  coord = os.environ.get("DXMI_COORDINATOR")
  if coord:
    jax.distributed.initialize(coordinator_address=coord,
                               num_processes=int(os.environ["DXMI_NUM_PROCESSES"]),
                               process_id=int(os.environ["DXMI_PROCESS_ID"]))
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")):
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
  return NamedSharding(mesh, P(*([None] * batch_axis + [DATA_AXIS])))


def check_batch_divisible(global_batch: int, what: str = "config.training.batch_size"):
  n = jax.device_count()
  if global_batch % n:
    raise ValueError(f"{what}={global_batch} is not divisible by the number of devices ({n}); "
                     f"use a multiple of {n}")
  if global_batch % jax.process_count():
    raise ValueError(f"{what}={global_batch} is not divisible by the number of processes "
                     f"({jax.process_count()})")


def process_slice(global_batch: int):
  """The [start, stop) rows of the global batch this process feeds."""
  per = global_batch // jax.process_count()
  start = jax.process_index() * per
  return start, start + per


def global_batch_from_local(local_tree, mesh: Mesh):
  """Assembles the per-process slices into one global, data-sharded array tree."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
                      local_tree)


def to_host(tree):
  """Fully-replicated (or addressable) arrays -> numpy on every process."""
  return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)
