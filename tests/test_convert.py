"""Checkpoint conversion: exact round trips, wrappers/prefixes, strict errors, Orbax export + CLI.

Forward parity of the converted networks is in test_models.py.
"""

import os

import jax
import numpy as np
import pytest

from conftest import SMALL, golden_path
from dxmi_jax import convert, torch_files
from dxmi_jax.errors import CheckpointError
from dxmi_jax.models import registry


@pytest.fixture
def torch():
  return pytest.importorskip("torch", reason="reading/writing .pt files needs torch (pip install -e '.[convert]')")


def _random_params(arch, cfg, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), registry.param_shapes(arch, cfg))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------------------------
# Torch-free mapping.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_state_dict_mapping_round_trip_without_torch(name):
  arch, cfg = SMALL[name]
  params = _random_params(arch, cfg)
  sd = convert.params_to_state_dict(params, arch, cfg)
  assert {k: v.shape for k, v in sd.items()} == convert.expected_state_dict_shapes(arch, cfg)
  back, extras = convert.state_dict_to_params(sd, arch, cfg)
  _assert_trees_equal(back, params)
  assert extras == {}


def test_layout_transposes():
  """Conv (O, I, kH, kW) <-> (kH, kW, I, O); Linear (out, in) <-> (in, out)."""
  arch, cfg = SMALL["igebm"]
  params = _random_params(arch, cfg)
  sd = convert.params_to_state_dict(params, arch, cfg)
  w = sd["net.blocks.2.conv1.weight"]  # (32, 16, 3, 3)
  np.testing.assert_array_equal(w[5, 7, 0, 2], params["blocks_2"]["conv1"]["kernel"][0, 2, 7, 5])
  np.testing.assert_array_equal(sd["net.linear.weight"], params["linear"]["kernel"].T)


# ---------------------------------------------------------------------------------------------
# Golden .pt files.
# ---------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(SMALL))
def test_from_torch_to_torch_round_trip_is_exact(torch, tmp_path, name):
  arch, cfg = SMALL[name]
  src = golden_path(f"{name}.pt")
  model, params = convert.from_torch(src, arch, **cfg)  # the two-value form
  _, params_x, extras = convert.from_torch_with_extras(src, arch, **cfg)
  _assert_trees_equal(params, params_x)
  assert model == registry.build(arch, cfg)
  out = tmp_path / "back.pt"
  convert.to_torch(params, arch, out, extras=extras, **cfg)
  original, _ = torch_files.load_torch_state_dict(src)
  written, _ = torch_files.load_torch_state_dict(out)
  assert set(written) == set(original)  # same official keys, incl. net. / log_betas / std
  for k, v in original.items():  # fp16 tensors were upcast; everything is bit-exact
    np.testing.assert_array_equal(written[k], v, err_msg=k)
  saved = torch.load(out, weights_only=True)["state_dict"]
  assert all(v.dtype == torch.float32 for v in saved.values())
  _, params2, extras2 = convert.from_torch_with_extras(out, arch, **cfg)
  _assert_trees_equal(params2, params)
  _assert_trees_equal(extras2, extras)
  assert os.listdir(tmp_path) == ["back.pt"]  # no temporary files left


@pytest.mark.torch
def test_adm_fp16_tensors_are_upcast(torch):
  raw = torch.load(golden_path("adm_cond.pt"), weights_only=True)["state_dict"]
  assert raw["input_blocks.1.0.in_layers.2.weight"].dtype == torch.float16
  _, params = convert.from_torch(golden_path("adm_cond.pt"), "adm_unet", **SMALL["adm_cond"][1])
  k = params["input_blocks_1_0"]["in_layers_2"]["kernel"]
  assert k.dtype == np.float32
  np.testing.assert_array_equal(k, raw["input_blocks.1.0.in_layers.2.weight"].float().numpy().transpose(2, 3, 1, 0))


@pytest.mark.torch
def test_bare_state_dict_with_ddp_and_net_prefixes(torch, tmp_path):
  arch, cfg = SMALL["igebm"]
  sd, _ = torch_files.load_torch_state_dict(golden_path("igebm.pt"))
  _, ref = convert.from_torch(golden_path("igebm.pt"), arch, **cfg)
  variants = {  # DDP-wrapped value net, and the bare IGEBMEncoderV2 (no "net.")
    "ddp.pt": {"module." + k: torch.from_numpy(v) for k, v in sd.items()},
    "encoder.pt": {"model": {k[len("net.") :]: torch.from_numpy(v) for k, v in sd.items()}},
  }
  for fname, obj in variants.items():
    torch.save(obj, tmp_path / fname)
    _, params = convert.from_torch(tmp_path / fname, arch, **cfg)
    _assert_trees_equal(params, ref)


@pytest.mark.torch
def test_architecture_mismatch_lists_keys_and_shapes(torch):
  src = golden_path("unet_small.pt")
  with pytest.raises(CheckpointError) as e:
    convert.from_torch(src, "ddpm_unet")  # real CIFAR config vs the small checkpoint
  msg = str(e.value)
  assert str(src) in msg and "'ddpm_unet'" in msg
  assert "missing key(s): down.0.block.1." in msg
  assert "conv_in.weight checkpoint (32, 3, 3, 3) vs model (128, 3, 3, 3)" in msg

  with pytest.raises(CheckpointError, match=r"unexpected key\(s\): .*blocks\.0\.class_embed"):
    convert.from_torch(golden_path("igebm_cond.pt"), "igebm", nh=16)  # forgot n_class
  with pytest.raises(CheckpointError, match=r"missing key\(s\).*\n.*unexpected key\(s\)"):
    convert.from_torch(golden_path("igebm.pt"), "adm_unet", **SMALL["adm_cond"][1])


@pytest.mark.torch
def test_bad_files_name_the_file(torch, tmp_path):
  data = golden_path("igebm.pt").read_bytes()
  cases = {"truncated.pt": data[: len(data) // 2], "notes.pt": b"this is not a checkpoint\n"}
  for fname, content in cases.items():
    (tmp_path / fname).write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{tmp_path / fname}.*not a readable PyTorch"):
      convert.from_torch(tmp_path / fname, "igebm", nh=16)
  torch.save({"fid": 1.0, "epoch": 3}, tmp_path / "no_weights.pt")
  with pytest.raises(CheckpointError, match="no_weights.pt holds no state_dict"):
    convert.from_torch(tmp_path / "no_weights.pt", "igebm", nh=16)
  with pytest.raises(CheckpointError, match="not found"):
    convert.from_torch(tmp_path / "absent.pt", "igebm", nh=16)


@pytest.mark.torch
def test_to_torch_rejects_params_of_another_config(torch, tmp_path):
  params = _random_params("igebm", dict(nh=16))
  with pytest.raises(
    CheckpointError,
    match=r"net\.blocks\.0\.conv1\.weight params "
    r"\(16, 16, 3, 3\) vs model \(32, 32, 3, 3\)",
  ):
    convert.to_torch(params, "igebm", tmp_path / "x.pt", nh=32)
  with pytest.raises(CheckpointError, match="log_betas"):
    convert.to_torch(params, "igebm", tmp_path / "x.pt", extras={"log_betas": np.zeros(4)}, nh=16)
  assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------------
# Orbax export and the CLI.
# ---------------------------------------------------------------------------------------------


@pytest.mark.torch
def test_cli_writes_orbax_checkpoint_that_load_pretrained_reads(torch, tmp_path, capsys):
  src = golden_path("unet_small.pt")
  out = tmp_path / "ddpm"
  argv = [
    "--arch=ddpm_unet",
    f"--in={src}",
    f"--out={out}",
    "--override",
    "ch=32",
    "--override",
    "ch_mult=(1, 2, 2)",
    "--override",
    "num_res_blocks=1",
  ]
  assert convert.main(argv) == 0
  assert "1113955 params" in capsys.readouterr().out
  model, params, extras = convert.load_pretrained(out)
  model_pt, params_pt, extras_pt = convert.load_pretrained(src, "ddpm_unet", ch=32, ch_mult=(1, 2, 2), num_res_blocks=1)
  assert model == model_pt
  _assert_trees_equal(params, params_pt)
  _assert_trees_equal(extras, extras_pt)
  assert sorted(extras) == ["log_betas", "std"]
  # Non-structural overrides apply on load; the arch must match.
  assert convert.load_pretrained(out, dtype="bfloat16")[0].dtype == np.dtype("bfloat16")
  with pytest.raises(CheckpointError, match="holds arch 'ddpm_unet', not 'igebm'"):
    convert.load_pretrained(out, "igebm")

  # Refusals leave nothing behind: existing --out, unknown key, wrong architecture.
  assert convert.main(argv) == 2
  assert "already exists" in capsys.readouterr().err
  assert convert.main(argv[:3] + ["--out", str(tmp_path / "b"), "--override", "chh=3"]) == 2
  assert "unknown config key(s) ['chh']" in capsys.readouterr().err
  assert convert.main(argv[:3] + ["--out", str(tmp_path / "c")]) == 2
  assert "mis-shaped" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ["ddpm"]
