"""Shared test setup: a persistent compilation cache and the golden-vector folder."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# The official code's outputs, committed with the tests (tests/golden/README.md, PROVENANCE.md).
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
REFERENCE = GOLDEN / "reference"

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))

import jax  # noqa: E402  (after the cache env var)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def golden_path(name: str) -> pathlib.Path:
  p = GOLDEN / name
  if not p.exists():
    pytest.fail(f"golden file {p} is missing from the checkout (tests/golden/)")
  return p


@pytest.fixture
def golden():
  return golden_path
