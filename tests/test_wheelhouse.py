"""The offline install path (docs/offline_install.md): our own wheel builds and installs without an index,
and the wheelhouse script reads our one list of requirements. Nothing here touches the network."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from dxmi_jax import wheelhouse


def test_requirements_come_from_setup_py():
  base = wheelhouse.requirements()
  assert "jax>=0.5" in base and "flax>=0.10" in base
  assert not any(r.startswith("pytest") for r in base)
  with_test = wheelhouse.requirements(["test"])
  assert with_test[: len(base)] == base and "pytest>=8" in with_test
  with pytest.raises(wheelhouse.WheelhouseError, match="--extras: unknown extra 'gpu'"):
    wheelhouse.requirements(["gpu"])


def test_skip_names_and_pins():
  names, pins = wheelhouse.parse_skip(["jax==0.6.2", "Orbax_Checkpoint", "torch"])
  assert names == {"jax", "orbax-checkpoint", "torch"} and pins == ["jax==0.6.2"]
  with pytest.raises(wheelhouse.WheelhouseError, match="--skip"):
    wheelhouse.parse_skip(["jax>=0.5"])


def test_bad_arguments_are_one_error_line(capsys):
  assert wheelhouse.main(["download", "--dest=/nonexistent/x", "--python-version=312"]) == 2
  assert wheelhouse.main(["install", "--from=/nonexistent/wheelhouse"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0].startswith("error: --python-version") and err[1].startswith("error: --from")


def test_install_command_is_offline():
  cmd = wheelhouse.install_command("wh", ["test"], "python")
  assert cmd == ["python", "-m", "pip", "install", "--no-index", "--find-links=wh", "dxmi-jax[test]"]


@pytest.mark.slow
def test_our_wheel_builds_and_installs_without_an_index(tmp_path):
  # Build from a copy, so that the build's egg-info and build/ folders stay out of the checkout.
  src = tmp_path / "src"
  src.mkdir()
  for name in ("setup.py", "README.md"):
    shutil.copy(REPO / name, src / name)
  shutil.copytree(REPO / "dxmi_jax", src / "dxmi_jax", ignore=shutil.ignore_patterns("__pycache__"))
  wheels = tmp_path / "wheels"
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
  subprocess.run(
    [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", str(wheels), str(src)],
    check=True,
    capture_output=True,
  )
  (wheel,) = wheels.glob("dxmi_jax-*.whl")
  # The venv sees neither this checkout nor the test environment's PYTHONPATH.
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
  py = venv / "bin" / "python"
  subprocess.run(
    [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-index", "--no-deps", str(wheel)],
    check=True,
    capture_output=True,
    env=env,
  )
  # Only the package's own files are checked (jax is not in this venv: --no-deps brings nothing else).
  installed = subprocess.run(
    [
      str(py),
      "-c",
      "import dxmi_jax, dxmi_jax.wheelhouse as w; print(dxmi_jax.__file__); print(len(w.requirements()))",
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env=env,
  )
  assert installed.returncode == 0, installed.stderr
  path, n = installed.stdout.split()
  assert pathlib.Path(path).is_relative_to(venv), path
  # Outside a clone the requirements come from the installed metadata: the same list.
  assert int(n) == len(wheelhouse.requirements())


def test_a_node_platform_accepts_the_older_manylinux_tags():
  tags = wheelhouse.expand_platforms(["manylinux_2_28_x86_64"])
  assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_27_x86_64" in tags  # jaxlib's tag
  assert {"manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_17_x86_64"} <= set(tags)
  assert "manylinux_2_29_x86_64" not in tags and not any("aarch64" in t for t in tags)
  assert wheelhouse.expand_platforms(["manylinux2014_aarch64"])[0] == "manylinux_2_17_aarch64"
  assert wheelhouse.expand_platforms(["macosx_11_0_arm64"]) == ["macosx_11_0_arm64"]


def test_wheel_names():
  assert wheelhouse.wheel_name_version("orbax_checkpoint-0.12.8-py3-none-any.whl") == ("orbax-checkpoint", "0.12.8")
  assert wheelhouse.wheel_name_version("/x/jaxlib-0.12.0.1-cp312-cp312-manylinux_2_27_x86_64.whl") == (
    "jaxlib",
    "0.12.0.1",
  )
