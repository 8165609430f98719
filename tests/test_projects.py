"""Projects on top of the core: loading by name, their modes and trainers, and the layering."""

import ast
import pathlib

import pytest

from configs import gaussians2d
from dxmi_jax import experiment, modes, projects
from dxmi_jax.errors import ConfigError

PKG = pathlib.Path(__file__).resolve().parents[1] / "dxmi_jax"


def test_unknown_project_and_trainer_are_config_errors():
  c = gaussians2d.get_config()
  c.project = "nope"
  with pytest.raises(ConfigError, match="config.project: unknown project 'nope'.*anomaly"):
    experiment.validate(c)
  c = gaussians2d.get_config()
  c.trainer = "gibbs"
  with pytest.raises(ConfigError, match="config.trainer: unknown trainer 'gibbs'"):
    experiment.validate(c)


def test_a_project_mode_needs_its_project(tmp_path):
  projects.load({"project": "anomaly"})  # registers the anomaly project's score mode
  with pytest.raises(ConfigError, match="--mode=score: provided by the projects \\['anomaly'\\]"):
    modes.run(gaussians2d.get_config(), str(tmp_path / "w"), "score")
  assert not (tmp_path / "w").exists()


def test_no_core_module_imports_a_project():
  """The arrows run one way: dxmi_jax/proj/* may import the core, never the reverse."""
  offenders = []
  for path in PKG.rglob("*.py"):
    if "proj" in path.relative_to(PKG).parts:
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      if any(n == "dxmi_jax.proj" or n.startswith("dxmi_jax.proj.") for n in names):
        offenders.append(str(path.relative_to(PKG)))
  assert not offenders, offenders
