"""The anomaly benchmark's data ships with the repository, unchanged (benchmarks/data/adbench/README.md)."""

import hashlib

import numpy as np
from conftest import REPO

DATA = REPO / "benchmarks" / "data" / "adbench"


def test_every_file_matches_its_checksum_and_is_listed():
  listed = {}
  for line in (DATA / "SHA256SUMS").read_text().splitlines():
    digest, name = line.split()
    listed[name] = digest
  on_disk = {str(p.relative_to(DATA)) for p in DATA.rglob("*.npz")}
  assert on_disk == set(listed) and len(listed) == 20
  for name, digest in listed.items():
    assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_files_hold_features_and_binary_labels():
  for p in sorted(DATA.rglob("*.npz")):
    with np.load(p, allow_pickle=False) as d:
      x, y = d["X"], d["y"]
    assert x.ndim == 2 and y.shape == (x.shape[0],), p
    assert set(np.unique(y)) == {0, 1}, p
