"""Deterministic, resumable batch loading: a batch is a pure function of (seed, step).

For global step ``step`` with ``steps_per_epoch = S`` and global batch ``B``:

* ``epoch = step // S``; the epoch's order is ``np.random.default_rng([seed, 0, epoch]).permutation(N)``
  (``shuffle=False``: ``arange(N)``), and the step takes positions ``[(step % S) * B, (step % S + 1) * B)``.
* Horizontal flips (``random_flip=True``) are ``np.random.default_rng([seed, 1, step]).random(B) < 0.5``,
  one decision per position of the *global* batch.

The middle entry of the seed tuple keeps the permutation and flip streams independent (without it the
epoch-0 permutation and the step-0 flips would come from the same generator state). Every process computes
the same global indices and flips and keeps its contiguous slice ``[p * B/P, (p + 1) * B/P)``, so the global
batch does not depend on the number of processes, and resuming from a step number reproduces the run exactly.

The official code differs only in its random streams (PyTorch ``DataLoader`` / ``DistributedSampler``
shuffling, which deals each rank a strided share of the permutation; torchvision or ``random.random()``
flips): the distribution of batches is the same (uniform without replacement within an epoch, last partial
batch dropped, flip probability 1/2).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

_PERMUTATION_STREAM = 0
_FLIP_STREAM = 1


def _as_int(value: Any, option: str, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{option} must be an integer >= {minimum}, got {value!r}")
  return int(value)


class ImageLoader:
  """Batches from a random-access image source (see `dxmi_jax.data.images.ImageSource`).

  ``get_batch(step)`` returns this process's slice of global batch ``step``:
  ``{"image": float32 (B/P, H, W, C) in [-1, 1] (x / 127.5 - 1), "label": int32 (B/P,)}``, plus
  ``"mask": bool (B/P,)`` when ``drop_remainder=False`` (see below). Labels are -1 for unconditional sources.

  Items of a batch are read with ``num_workers`` threads (Pillow decoding and TFDS reads release the GIL).

  Args:
    source: random-access source (``__len__``, ``__getitem__(i) -> {"image": uint8 HWC, "label": int}``).
    global_batch_size: batch size summed over all processes (``config.training.batch_size``).
    seed: non-negative integer; with ``step`` it fixes every batch.
    random_flip: mirror each image horizontally with probability 1/2.
    shuffle: reshuffle every epoch; False reads the source in order.
    drop_remainder: True (training): an epoch is ``N // B`` full batches and the last ``N % B`` positions of
      each epoch's permutation are skipped. False (evaluation): ``ceil(N / B)`` batches; the last one is filled
      up with the first positions of the same epoch's order and ``"mask"`` is False on those fill-ins.
    process_index, process_count: this process and the number of processes; default
      ``jax.process_index()`` / ``jax.process_count()``.
    num_workers: decoding threads per batch (1 = decode in the calling thread).
    prefetch: batches `iterate` prepares ahead in its background thread.
  """

  def __init__(
    self,
    source: Any,
    global_batch_size: int,
    seed: int,
    *,
    random_flip: bool = False,
    shuffle: bool = True,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    num_workers: int | None = None,
    prefetch: int = 2,
  ):
    self.source = source
    self.global_batch_size = _as_int(global_batch_size, "global batch size (config.training.batch_size)", 1)
    self.seed = _as_int(seed, "loader seed (config.training.seed)", 0)
    self.random_flip = bool(random_flip)
    self.shuffle = bool(shuffle)
    self.drop_remainder = bool(drop_remainder)
    self.process_count = _as_int(jax.process_count() if process_count is None else process_count, "process_count", 1)
    self.process_index = _as_int(jax.process_index() if process_index is None else process_index, "process_index", 0)
    if self.process_index >= self.process_count:
      raise ValueError(f"process_index {self.process_index} is not below process_count {self.process_count}")
    if self.global_batch_size % self.process_count:
      raise ValueError(
        f"config.training.batch_size = {self.global_batch_size} is the global batch size and must be "
        f"divisible by the number of processes ({self.process_count}); each process loads "
        f"batch_size / process_count examples"
      )
    self.local_batch_size = self.global_batch_size // self.process_count
    if num_workers is None:
      num_workers = min(8, os.cpu_count() or 1)
    self.num_workers = _as_int(num_workers, "num_workers", 1)
    self.prefetch = _as_int(prefetch, "prefetch", 1)

    self.num_examples = len(source)
    if self.num_examples == 0:
      raise ValueError("the data source is empty")
    if self.drop_remainder:
      if self.num_examples < self.global_batch_size:
        raise ValueError(
          f"config.training.batch_size = {self.global_batch_size} exceeds the data set size "
          f"({self.num_examples}); with drop_remainder=True an epoch would hold no batch"
        )
      self.steps_per_epoch = self.num_examples // self.global_batch_size
    else:
      self.steps_per_epoch = -(-self.num_examples // self.global_batch_size)
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._pool_lock = threading.Lock()
    self._perm_cache: tuple[int, np.ndarray] | None = None

  # -- index arithmetic (pure functions of seed and step) -------------------------------------------------

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the source (int64, length N)."""
    cached = self._perm_cache
    if cached is not None and cached[0] == epoch:
      return cached[1]
    if self.shuffle:
      order = np.random.default_rng([self.seed, _PERMUTATION_STREAM, epoch]).permutation(self.num_examples)
    else:
      order = np.arange(self.num_examples)
    self._perm_cache = (epoch, order)
    return order

  def global_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices of global batch ``step`` and its validity mask (all True when dropping remainders)."""
    step = _as_int(step, "step", 0)
    epoch, within = divmod(step, self.steps_per_epoch)
    order = self.epoch_order(epoch)
    positions = within * self.global_batch_size + np.arange(self.global_batch_size)
    mask = positions < self.num_examples
    return order[positions % self.num_examples], mask

  def flips(self, step: int) -> np.ndarray:
    """Per-position horizontal-flip decisions of global batch ``step`` (all False without random_flip)."""
    step = _as_int(step, "step", 0)
    if not self.random_flip:
      return np.zeros(self.global_batch_size, dtype=bool)
    return np.random.default_rng([self.seed, _FLIP_STREAM, step]).random(self.global_batch_size) < 0.5

  # -- reading --------------------------------------------------------------------------------------------

  def _read(self, indices: np.ndarray) -> list[dict[str, Any]]:
    getitem = self.source.__getitem__
    if self.num_workers == 1 or len(indices) == 1:
      return [getitem(int(i)) for i in indices]
    with self._pool_lock:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.num_workers, thread_name_prefix="dxmi-decode")
      pool = self._pool
    return list(pool.map(getitem, [int(i) for i in indices]))

  def get_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of global batch ``step`` (see the class docstring)."""
    indices, mask = self.global_indices(step)
    flips = self.flips(step)
    lo = self.process_index * self.local_batch_size
    hi = lo + self.local_batch_size
    indices, mask, flips = indices[lo:hi], mask[lo:hi], flips[lo:hi]
    items = self._read(indices)
    images = []
    for index, item in zip(indices, items):
      image = np.asarray(item["image"])
      if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"source item {index} has image {image.dtype} {image.shape}; expected uint8 HWC")
      if images and image.shape != images[0].shape:
        raise ValueError(
          f"source item {index} has image shape {image.shape}, but the batch so far has "
          f"{images[0].shape}; give the source an image_size so all images match"
        )
      images.append(image)
    images = np.stack(images)
    if flips.any():
      images[flips] = images[flips, :, ::-1]
    labels = np.array([int(item.get("label", -1)) for item in items], dtype=np.int32)
    batch = {"image": images.astype(np.float32) / np.float32(127.5) - np.float32(1.0), "label": labels}
    if not self.drop_remainder:
      batch["mask"] = mask
    return batch

  def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``get_batch(start_step)``, ``get_batch(start_step + 1)``, ... (``num_steps`` of them, or forever).

    A background thread prepares up to ``prefetch`` batches ahead. Errors in it are re-raised here; closing
    the generator (or dropping it) stops the thread.
    """
    start_step = _as_int(start_step, "start_step", 0)
    end = None if num_steps is None else start_step + _as_int(num_steps, "num_steps", 0)
    buffer: queue.Queue = queue.Queue(maxsize=self.prefetch)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
      while not stop.is_set():
        try:
          buffer.put(item, timeout=0.05)
          return True
        except queue.Full:
          continue
      return False

    def produce():
      step = start_step
      try:
        while end is None or step < end:
          if stop.is_set() or not put(("batch", self.get_batch(step))):
            return
          step += 1
        put(("end", done))
      except BaseException as e:  # pylint: disable=broad-except
        put(("error", e))

    thread = threading.Thread(target=produce, name="dxmi-loader", daemon=True)
    thread.start()
    try:
      while True:
        kind, value = buffer.get()
        if kind == "end":
          return
        if kind == "error":
          raise value
        yield value
    finally:
      stop.set()
      thread.join()

  def close(self) -> None:
    """Stops the decoding threads (the loader can still be used; they restart on demand)."""
    with self._pool_lock:
      if self._pool is not None:
        self._pool.shutdown(wait=True)
        self._pool = None

  def __enter__(self) -> "ImageLoader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def prefetch_to_device(iterator: Iterator[Any], sharding: Any, size: int = 2) -> Iterator[Any]:
  """Moves host batches to devices, keeping ``size`` batches in flight.

  Each leaf becomes a global ``jax.Array`` via ``jax.make_array_from_process_local_data(sharding, leaf)``: the
  leaf is this process's slice, the global leading dimension is inferred from the sharding, so with a mesh
  whose ``"data"`` axis spans all devices (ordered by process) the global array is exactly the global batch
  of `ImageLoader`. Transfers are asynchronous, so the next batches copy while the current step runs.

  Args:
    iterator: yields pytrees of host arrays (e.g. ``ImageLoader.iterate(...)``).
    sharding: a ``jax.sharding.Sharding`` used for every leaf (e.g. ``NamedSharding(mesh, P("data"))``), or a
      pytree of shardings with the batch's structure.
    size: number of batches transferred ahead (>= 1).
  """
  size = _as_int(size, "prefetch size", 1)

  def to_device(batch):
    if isinstance(sharding, jax.sharding.Sharding):
      return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, x), batch, sharding)

  in_flight: collections.deque = collections.deque()
  iterator = iter(iterator)
  for batch in iterator:
    in_flight.append(to_device(batch))
    if len(in_flight) >= size:
      yield in_flight.popleft()
  while in_flight:
    yield in_flight.popleft()
