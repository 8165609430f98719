"""The official config names (create_model / YAML spellings) give the same networks as ours."""

import textwrap

import jax
import numpy as np
import pytest

from conftest import SMALL, golden_path
from dxmi_jax import convert
from dxmi_jax.models import official_names, registry

# golden README A2 in the official spelling (create_model's keyword arguments)
ADM_OFFICIAL = dict(
  image_size=32,
  num_channels=32,
  num_res_blocks=1,
  channel_mult="1,2,2",
  attention_resolutions="16,8",
  num_heads=4,
  num_head_channels=16,
  num_heads_upsample=-1,
  class_cond=True,
  num_classes=10,
  use_scale_shift_norm=True,
  resblock_updown=True,
  dropout=0.0,
  learn_sigma=False,
  use_checkpoint=False,
  use_new_attention_order=False,
  use_fp16=False,
)
ADM_OURS = SMALL["adm_cond"][1]


def test_adm_official_names_resolve_to_our_config():
  assert registry.resolve_config("adm_unet", ADM_OFFICIAL) == registry.resolve_config("adm_unet", ADM_OURS)


def test_channel_mult_default_and_class_cond_false():
  cfg = registry.resolve_config("adm_unet", image_size=64, channel_mult="", class_cond=False)
  assert cfg.channel_mult == (1, 2, 3, 4) and cfg.num_classes is None
  assert registry.resolve_config("adm_unet", image_size=256, channel_mult="").channel_mult == (1, 1, 2, 2, 4, 4)
  assert registry.resolve_config("adm_unet", class_cond=True).num_classes == official_names.ADM_NUM_CLASSES
  assert registry.resolve_config("adm_unet", learn_sigma=True).out_channels == 6


@pytest.mark.parametrize(
  "bad, match",
  [
    (dict(num_channels=32, model_channels=32), "both 'num_channels'"),
    (dict(use_new_attention_order=True), "use_new_attention_order"),
    (dict(image_size=32, channel_mult=""), "no default for image_size=32"),
    (dict(attention_resolutions="16,x"), "attention_resolutions"),
    (dict(class_cond=False, num_classes=10), "contradicts"),
  ],
)
def test_contradictory_or_unsupported_official_values_fail(bad, match):
  with pytest.raises(ValueError, match=match):
    registry.resolve_config("adm_unet", bad)


def test_igebm_official_switches():
  cfg = registry.resolve_config(
    "igebm",
    dict(nh=16, use_spectral_norm=False, keepdim=False, avg_pool_dim=1, _target_="models.modules.IGEBMEncoderV2"),
  )
  assert cfg == registry.resolve_config("igebm", nh=16)
  with pytest.raises(ValueError, match="use_spectral_norm"):
    registry.resolve_config("igebm", use_spectral_norm=True)


@pytest.mark.torch
def test_from_torch_with_official_names_is_exact():
  pytest.importorskip("torch")
  _, ours = convert.from_torch(golden_path("adm_cond.pt"), "adm_unet", **ADM_OURS)
  _, official = convert.from_torch(golden_path("adm_cond.pt"), "adm_unet", **ADM_OFFICIAL)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(official)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


YAML = """\
diffusion:
    sigma_min: 0.002
    sigma_max: 80.0
    image_size: 32
    num_channels: 32
    num_res_blocks: 1
    num_heads: 4
    num_heads_upsample: -1
    num_head_channels: 16
    attention_resolutions: "16,8"
    channel_mult: "1,2,2"
    dropout: 0.0
    class_cond: True
    use_checkpoint: False
    use_scale_shift_norm: True
    resblock_updown: True
    use_fp16: False
    use_new_attention_order: False
    learn_sigma: False
    weight_schedule: "uniform"
    distillation: False
sampler:
  sample_shape: [3, 32, 32]
  n_timesteps: 10
  class_cond: True
  num_classes: 10
value:
  _target_: models.value.TimeIndependentValue
  net:
    _target_: models.modules.IGEBMEncoderV2
    in_chan: 3
    out_chan: 1
    use_spectral_norm: False
    keepdim: False
    out_activation: linear
    avg_pool_dim: 1
    learn_out_scale: True
    nh: 16
"""


def test_network_from_yaml(tmp_path):
  path = tmp_path / "T10.yaml"
  path.write_text(YAML)
  arch, fields = official_names.network_from_yaml(str(path))
  assert arch == "adm_unet"
  assert registry.resolve_config(arch, fields) == registry.resolve_config("adm_unet", ADM_OURS)
  arch, fields = official_names.network_from_yaml(str(path), "value")
  assert arch == "igebm" and registry.resolve_config(arch, fields) == registry.resolve_config("igebm", nh=16)
  bad = tmp_path / "bad.yaml"
  bad.write_text(
    textwrap.dedent("""\
      sampler_net:
        _target_: models.ddgan.models.ncsnpp_generator_adagn.NCSNpp
      """)
  )
  with pytest.raises(ValueError, match="no sampler network"):
    official_names.network_from_yaml(str(bad))


@pytest.mark.torch
def test_convert_cli_reads_an_official_yaml(tmp_path, capsys):
  pytest.importorskip("torch")
  path = tmp_path / "T10.yaml"
  path.write_text(YAML)
  out = tmp_path / "orbax"
  assert convert.main(["--yaml", str(path), "--in", str(golden_path("adm_cond.pt")), "--out", str(out)]) == 0
  _, params, extras = convert.load_pretrained(str(out))
  _, ref, ref_extras = convert.from_torch_with_extras(golden_path("adm_cond.pt"), "adm_unet", **ADM_OURS)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert sorted(extras) == sorted(ref_extras) == ["log_betas"]
  assert convert.main(["--yaml", str(tmp_path / "missing.yaml"), "--in", "x.pt", "--out", str(tmp_path / "o2")]) == 2
  assert "error: --yaml" in capsys.readouterr().err
