"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The one helper every writer of the package uses (samples, figures, metrics files,
reference statistics, checkpoint metadata, converters, benchmarks).  It sits at
the bottom of the package: it imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write_fn: Callable[[Any], None], suffix: str = "") -> None:
  """Calls ``write_fn(binary file)`` on a temp file beside ``path``, then renames it over ``path``.

  The temp file is fsynced first and removed if ``write_fn`` fails, so an
  interrupted write leaves the previous file (or none) and no stray temp file.
  """
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
  try:
    with os.fdopen(fd, "wb") as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_text(path: PathLike, text: str) -> None:
  atomic_write(path, lambda f: f.write(text.encode("utf-8")), ".txt")


def atomic_write_json(path: PathLike, obj: Any, indent: int = 1) -> None:
  atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_savez(path: PathLike, **arrays) -> None:
  """np.savez to ``path`` exactly (no ``.npz`` appended)."""
  atomic_write(path, lambda f: np.savez(f, **arrays), ".npz")


@contextlib.contextmanager
def atomic_dir(out_dir: PathLike, overwrite: bool = False) -> Iterator[str]:
  """Yields a temp folder beside ``out_dir`` to fill; on success it replaces ``out_dir`` whole.

  ``out_dir`` that exists is an error unless ``overwrite``; a failure leaves ``out_dir`` as it
  was and no temp folder behind.  The folder gets the usual (umask) permissions.
  """
  out_dir = os.path.abspath(os.fspath(out_dir))
  if os.path.exists(out_dir) and not overwrite:
    raise FileExistsError(f"{out_dir} already exists (pass overwrite=True / --force to replace it)")
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=os.path.basename(out_dir) + ".partial-")
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
  try:
    yield tmp
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
