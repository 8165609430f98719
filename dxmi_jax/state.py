"""The training state of DxMI: one Flax TrainState per network plus the AVR scales.

Everything needed to continue a run exactly is in here (and the data position,
which is the step itself: batches are a pure function of (seed, step)).
"""

from __future__ import annotations

from typing import Optional

import flax
import jax
import jax.numpy as jnp
from flax.training import train_state

TrainState = train_state.TrainState


@flax.struct.dataclass
class DxMIState:
  """step:              iterations done (also the data position).
  rng:                  the run's base key; iteration i uses fold_in(rng, i).
  policy:               TrainState of {"net": ..., "log_sigma": (T,)}.
  value:                TrainState of the value network (also the energy unless `energy` is set).
  energy:               TrainState of a separate energy network, or None.
  velocity_scale:       (T,) AVR scales s_t, sampling order.
  skipped:              iterations skipped for a non-finite loss or gradient, in total.
  consecutive_skips:    ... in a row, up to now.
  max_skip_run:         the longest such run so far (checked by the loop between syncs).
  nonfinite_mask:       bits of dxmi.NONFINITE_QUANTITIES that were non-finite at the last skip.
  """

  step: jax.Array
  rng: jax.Array
  policy: TrainState
  value: TrainState
  energy: Optional[TrainState]
  velocity_scale: jax.Array
  skipped: jax.Array
  consecutive_skips: jax.Array
  max_skip_run: jax.Array
  nonfinite_mask: jax.Array


def create_state(
  rng, policy_state: TrainState, value_state: TrainState, velocity_scale, energy_state: Optional[TrainState] = None
) -> DxMIState:
  # TrainState.create leaves step a Python int; a strongly typed int32 keeps the
  # compiled train step from being traced again once the step becomes an array.
  fix = lambda ts: None if ts is None else ts.replace(step=jnp.asarray(ts.step, jnp.int32))
  return DxMIState(
    step=jnp.zeros((), jnp.int32),
    rng=rng,
    policy=fix(policy_state),
    value=fix(value_state),
    energy=fix(energy_state),
    velocity_scale=jnp.asarray(velocity_scale, jnp.float32),
    skipped=jnp.zeros((), jnp.int32),
    consecutive_skips=jnp.zeros((), jnp.int32),
    max_skip_run=jnp.zeros((), jnp.int32),
    nonfinite_mask=jnp.zeros((), jnp.int32),
  )
