"""Preemption: SIGTERM ends a run at an iteration boundary, with a checkpoint (docs/faults.md).

TPU VMs, GKE and most cluster schedulers announce preemption with SIGTERM and kill
the job some seconds later.  ``watch()`` (entered by ``modes.run`` for training and
pretraining) arranges that the loops notice it:

* one process: a Python handler sets a flag that the loop reads after each
  iteration (``Watcher.should_stop``); during an evaluation (``Watcher.interruptible``)
  the handler raises ``EvaluationInterrupted`` instead, so a long evaluation in flight
  is dropped rather than waited for;
* several processes (after ``jax.distributed.initialize``): JAX's preemption service
  owns SIGTERM.  It tells every process, and
  ``multihost_utils.reached_preemption_sync_point(step)``, called at every step by
  every process, turns true at the same step everywhere, so all processes save the
  same step.  An evaluation in flight there runs to its end.

The loop then saves, flushes its logs and raises ``Preempted``; main.py prints one
line and exits with ``EXIT_STATUS``.  A restart resumes from that checkpoint bit for
bit, as from any other.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import jax
from absl import logging

#: the exit status of a run stopped by SIGTERM after saving (128 + SIGTERM, as a shell reports it)
EXIT_STATUS = 143


class Preempted(Exception):
  """Raised by a loop after it saved its state on SIGTERM; the message says what was saved."""


class EvaluationInterrupted(BaseException):
  """Raised inside an evaluation by SIGTERM (one process): the evaluation is dropped.  A
  BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""


class Watcher:
  """Reads SIGTERM for the training loops (one per run; ``watch()`` installs it)."""

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.requested = False  # SIGTERM seen (one process)
    self._interruptible = False
    self._previous = None

  # --------------------------------------------------------------- handler
  def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
    if not self.requested:
      logging.warning("SIGTERM: stopping at the end of this iteration, after saving a checkpoint")
    self.requested = True
    if self._interruptible:
      self._interruptible = False
      raise EvaluationInterrupted()

  def install(self):
    # several processes: JAX's preemption service handles SIGTERM (a Python handler would replace it)
    if not self.multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def uninstall(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  # ----------------------------------------------------------------- loops
  def should_stop(self, step: int) -> bool:
    """True when the run must save ``step`` and stop.  Every process calls it at every step
    (several processes: it is JAX's preemption sync point, the same step on all of them)."""
    if self.multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # the preemption service is off (jax_enable_preemption_service=False)
        return False
    return self.requested

  @contextlib.contextmanager
  def interruptible(self):
    """A block SIGTERM may abandon (one process): an evaluation, dropped when preempted."""
    if self.requested and not self.multi_process:
      raise EvaluationInterrupted()
    self._interruptible = True
    try:
      yield
    finally:
      self._interruptible = False


def current() -> Watcher:
  """The watcher ``watch()`` installed, read from the SIGTERM handler it holds (no module state),
  or an inert one (a loop called outside ``watch()``, e.g. from a test).  With several processes
  no handler is installed, and a fresh watcher behaves as the installed one: both wait for JAX's
  preemption sync point."""
  owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
  return owner if isinstance(owner, Watcher) else Watcher()


@contextlib.contextmanager
def watch():
  """Installs the SIGTERM watcher for the duration of a run."""
  watcher = Watcher()
  watcher.install()
  try:
    yield watcher
  finally:
    watcher.uninstall()
