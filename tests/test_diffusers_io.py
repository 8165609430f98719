"""Hugging Face diffusers UNet2DModel folders: import, export, parity with diffusers' own forward.

Torch-free tests (config mapping, errors, scheduler checks, the safetensors round trip) run
everywhere; the parity tests build small random UNet2DModels with diffusers itself
(``pip install -e '.[test,convert]'``) and are marked ``torch``.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from dxmi_jax import convert, diffusers_io
from dxmi_jax.convert import CheckpointError
from dxmi_jax.errors import ConfigError
from dxmi_jax.models import registry
from dxmi_jax.policies import VARPolicy

EXAMPLE = REPO / "docs" / "examples" / "sample_exported.py"

# Small UNet2DModels: widths that are not one base times integers with 8 groups, multi-head
# attention and symmetric downsampling (train_unconditional.py's choices, scaled down); the
# google/ddpm-* choices (sin first, freq_shift 1, right/bottom pad, one head, eps 1e-6); and
# integer multiples with two layers per block, multi-head attention at the top level only.
CONFIGS = {
  "uneven_multihead_pad1": dict(
    sample_size=16,
    block_out_channels=(24, 32, 48),
    norm_num_groups=8,
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
    downsample_padding=1,
  ),
  "google_ddpm_like": dict(
    sample_size=8,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D"),
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
  ),
  "multiples_top_attention": dict(
    sample_size=16,
    in_channels=1,
    out_channels=2,
    block_out_channels=(16, 32, 32),
    norm_num_groups=4,
    layers_per_block=2,
    down_block_types=("AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
    attention_head_dim=4,
    downsample_padding=1,
    flip_sin_to_cos=False,
    freq_shift=0,
    dropout=0.1,
  ),
}
TIMES = np.array([0.0, 3.7, 999.0], np.float32)


@pytest.fixture
def diffusers():
  pytest.importorskip("torch", reason="diffusers' UNet2DModel needs torch (pip install -e '.[convert]')")
  return pytest.importorskip("diffusers", reason="parity with diffusers needs it (pip install -e '.[test]')")


def _random_unet(diffusers, cfg, seed):
  """A diffusers UNet2DModel with every weight randomised (its zero-initialised layers too)."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  m = diffusers.UNet2DModel(**cfg).eval()
  with torch.no_grad():
    for p in m.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return m


def _their_forward(m, x_nhwc, t):
  import torch  # pylint: disable=import-outside-toplevel

  with torch.no_grad():
    out = m(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))), torch.from_numpy(t)).sample
  return out.numpy().transpose(0, 2, 3, 1)


def _our_forward(model, params, x_nhwc, t):
  with jax.default_matmul_precision("highest"):
    return np.asarray(model.apply({"params": params}, jnp.asarray(x_nhwc), jnp.asarray(t)))


def _assert_close(ours, ref):
  """1e-4 relative to the output's scale (and elementwise)."""
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def _inputs(model, seed=1):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((len(TIMES), model.resolution, model.resolution, model.in_channels)).astype(np.float32)


def _random_params(cfg, seed=0):
  rng = np.random.default_rng(seed)
  shapes = registry.param_shapes("ddpm_unet", cfg)
  return jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape).astype(np.float32)), shapes)


def _tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# A tiny config of ours in the train_unconditional.py style, for the torch-free tests.
OURS = dict(
  ch=24,
  ch_mult=(),
  level_channels=(24, 32, 48),
  num_res_blocks=1,
  attn_resolutions=(8,),
  resolution=16,
  norm_groups=8,
  norm_eps=1e-5,
  downsample_padding=1,
  attn_head_channels=8,
  flip_sin_to_cos=True,
  freq_shift=0.0,
  dropout=0.0,
)


# ---------------------------------------------------------------------------------------------
# Torch-free: config mapping, errors, safetensors.
# ---------------------------------------------------------------------------------------------


def test_existing_ddpm_defaults_are_unchanged():
  """The new fields default to the official network (google/ddpm-* match it too)."""
  cfg = registry.default_config("ddpm_unet")
  assert (cfg.level_channels, cfg.norm_groups, cfg.norm_eps, cfg.downsample_padding) == ((), 32, 1e-6, 0)
  assert (cfg.attn_head_channels, cfg.flip_sin_to_cos, cfg.freq_shift) == (0, False, 1.0)
  google = dict(
    _class_name="UNet2DModel",
    sample_size=32,
    block_out_channels=[128, 256, 256, 256],
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    layers_per_block=2,
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    dropout=0.1,
  )
  fields = diffusers_io.fields_from_unet_config(google)
  assert registry.resolve_config("ddpm_unet", fields) == cfg  # exactly our CIFAR-10 DDPM


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("resnet_time_scale_shift", "scale_shift", r"resnet_time_scale_shift='scale_shift'"),
    ("time_embedding_type", "fourier", r"time_embedding_type='fourier'"),
    ("up_block_types", ["UpBlock2D", "UpBlock2D"], r"up_block_types=.*mirror of down_block_types"),
    ("down_block_types", ["SkipDownBlock2D", "AttnDownBlock2D"], r"down_block_types=.*SkipDownBlock2D"),
    ("attention_head_dim", 12, r"attention_head_dim=12.*divisor of the attended widths \[64\]"),
    ("sample_size", None, r"sample_size=None"),
    ("sample_size", [8, 16], r"sample_size=\[8, 16\]"),
    ("downsample_padding", 2, r"downsample_padding=2"),
    ("class_embed_type", "timestep", r"class_embed_type='timestep'"),
    ("mid_block_scale_factor", 2.0, r"mid_block_scale_factor=2.0"),
    ("norm_num_groups", 24, r"norm_num_groups=24"),
    ("some_future_field", 1, r"some_future_field=1"),
  ],
)
def test_unrepresentable_config_names_the_field(field, value, match):
  cfg = dict(
    _class_name="UNet2DModel",
    sample_size=8,
    block_out_channels=[32, 64],
    down_block_types=["DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D"],
  )
  diffusers_io.fields_from_unet_config(cfg)  # the base config is fine
  cfg[field] = value
  with pytest.raises(CheckpointError, match=match):
    diffusers_io.fields_from_unet_config(cfg)


def test_scheduler_config_checks():
  ok = dict(_class_name="DDPMScheduler", num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02)
  diffusers_io.check_scheduler_config(ok)  # prediction_type missing = epsilon
  diffusers_io.check_scheduler_config(dict(ok, prediction_type="epsilon", beta_schedule="linear"))
  for key, value in [
    ("beta_schedule", "squaredcos_cap_v2"),
    ("prediction_type", "v_prediction"),
    ("num_train_timesteps", 500),
    ("beta_end", 0.012),
    ("trained_betas", [0.1, 0.2]),
  ]:
    with pytest.raises(CheckpointError, match=f"{key}="):
      diffusers_io.check_scheduler_config(dict(ok, **{key: value}))


def test_export_import_round_trip_without_torch(tmp_path, monkeypatch):
  """to_diffusers -> from_diffusers is exact, and reading safetensors never imports torch."""
  model = registry.build("ddpm_unet", OURS)
  params = _random_params(OURS)
  d = convert.to_diffusers(model, params, tmp_path / "unet")
  assert sorted(os.listdir(d)) == ["config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"]
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
  back_model, back = convert.from_diffusers(d)
  assert back_model == model
  _tree_equal(back, params)
  with pytest.raises(FileExistsError):
    convert.to_diffusers(model, params, d)


def test_bfloat16_safetensors_are_read_without_torch(tmp_path, monkeypatch):
  """numpy has no bfloat16: such files are read by our own reader, upcast exactly."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel

  model = registry.build("ddpm_unet", OURS)
  params = jax.tree.map(lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32), _random_params(OURS))
  d = convert.to_diffusers(model, params, tmp_path / "unet")
  sd = diffusers_io.read_weights(d)[0]
  st = os.path.join(d, "diffusion_pytorch_model.safetensors")
  # rewrite the file in bfloat16 by hand (the safetensors layout: header size, JSON header, bytes)
  header, chunks, offset = {}, [], 0
  for k, v in sd.items():
    raw = np.asarray(v, ml_dtypes.bfloat16).tobytes()
    header[k] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  head = json.dumps(header).encode()
  with open(st, "wb") as f:
    f.write(len(head).to_bytes(8, "little") + head + b"".join(chunks))
  monkeypatch.setitem(sys.modules, "torch", None)
  _tree_equal(convert.from_diffusers(d)[1], params)


def test_bad_scheduler_in_folder_is_an_error(tmp_path):
  model = registry.build("ddpm_unet", OURS)
  d = convert.to_diffusers(model, _random_params(OURS), tmp_path / "unet")
  with open(os.path.join(d, "scheduler_config.json")) as f:
    sched = json.load(f)
  sched["prediction_type"] = "sample"
  with open(os.path.join(d, "scheduler_config.json"), "w") as f:
    json.dump(sched, f)
  with pytest.raises(CheckpointError, match="scheduler_config.json: prediction_type='sample'"):
    convert.from_diffusers(d)


def test_pipeline_folder_layout(tmp_path):
  """A pipeline folder (model_index.json, unet/, scheduler/) is read through its unet/ and scheduler/."""
  model = registry.build("ddpm_unet", OURS)
  params = _random_params(OURS)
  pipe = tmp_path / "pipe"
  convert.to_diffusers(model, params, pipe / "unet")
  (pipe / "scheduler").mkdir()
  os.replace(pipe / "unet" / "scheduler_config.json", pipe / "scheduler" / "scheduler_config.json")
  (pipe / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
  assert diffusers_io.is_diffusers_folder(str(pipe)) and not diffusers_io.is_diffusers_folder(str(tmp_path))
  _tree_equal(convert.from_diffusers(pipe)[1], params)
  sched = json.loads((pipe / "scheduler" / "scheduler_config.json").read_text())
  (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(sched, beta_schedule="scaled_linear")))
  with pytest.raises(CheckpointError, match="scheduler_config.json: beta_schedule='scaled_linear'"):
    convert.from_diffusers(pipe)


def test_unrepresentable_export_is_an_error(tmp_path):
  model = registry.build("ddpm_unet", dict(ch=16, ch_mult=(2, 2), resolution=8, attn_resolutions=()))
  with pytest.raises(CheckpointError, match="ch=16 differs from the first level's width 32"):
    convert.to_diffusers(model, None, tmp_path / "x")
  assert not (tmp_path / "x").exists()


def test_cli_import_and_errors(tmp_path, capsys):
  model = registry.build("ddpm_unet", OURS)
  params = _random_params(OURS)
  d = convert.to_diffusers(model, params, tmp_path / "unet")
  out = tmp_path / "orbax"
  assert convert.main([f"--diffusers={d}", f"--out={out}"]) == 0
  loaded_model, loaded, extras = convert.load_pretrained(str(out))
  assert loaded_model == model and extras == {}
  _tree_equal(loaded, params)
  # a folder that is not a UNet2DModel (the Orbax one), a structural override, clashing or missing
  # options: one error line, nothing written
  for argv, match in [
    ([f"--diffusers={out}", f"--out={tmp_path / 'o1'}"], "is not a diffusers UNet2DModel folder"),
    ([f"--diffusers={d}", f"--out={tmp_path / 'o2'}", "--override", "ch=32"], "only .* may be set"),
    ([f"--diffusers={d}", "--in=x.pt", f"--out={tmp_path / 'o3'}"], "--in: not used with --diffusers"),
    (["--to_diffusers", f"--out={tmp_path / 'o4'}"], "--workdir: required"),
    (["--to_diffusers", f"--workdir={tmp_path}", f"--out={tmp_path / 'o5'}"], "config.json is missing"),
  ]:
    assert convert.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error:") and any(re.search(match, e) for e in err), err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["orbax", "unet"]


# ---------------------------------------------------------------------------------------------
# Parity with diffusers' UNet2DModel.
# ---------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_from_diffusers_matches_diffusers_forward(diffusers, tmp_path, name):
  m = _random_unet(diffusers, CONFIGS[name], seed=sorted(CONFIGS).index(name))
  # one folder as safetensors, one as .bin (the older format, read through torch)
  safe = name != "google_ddpm_like"
  m.save_pretrained(tmp_path / name, safe_serialization=safe)
  weights = "diffusion_pytorch_model." + ("safetensors" if safe else "bin")
  assert os.path.isfile(tmp_path / name / weights)
  model, params = convert.from_diffusers(tmp_path / name)
  x = _inputs(model)
  _assert_close(_our_forward(model, params, x, TIMES), _their_forward(m, x, TIMES))


@pytest.mark.torch
def test_old_attention_names_are_read(diffusers, tmp_path):
  """google/ddpm-* folders name the attention projections query/key/value/proj_attn."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  cfg = CONFIGS["google_ddpm_like"]
  m = _random_unet(diffusers, cfg, seed=5)
  m.save_pretrained(tmp_path / "new")
  new = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  sd = {}
  for k, v in m.state_dict().items():
    for a, b in new.items():
      k = k.replace(f".{a}.", f".{b}.")
    sd[k] = v.numpy()
  assert any(".proj_attn." in k for k in sd)
  (tmp_path / "old").mkdir()
  save_file(sd, str(tmp_path / "old" / "diffusion_pytorch_model.safetensors"))
  with open(tmp_path / "new" / "config.json") as f:
    (tmp_path / "old" / "config.json").write_text(f.read())
  _, a = convert.from_diffusers(tmp_path / "old")
  _, b = convert.from_diffusers(tmp_path / "new")
  _tree_equal(a, b)


def _fastdpm_state_dict(diffusers_sd, num_levels):
  """The FastDPM (official DDPM) keys of a diffusers DDPM state_dict, by the correspondence that
  diffusers' scripts/convert_ddpm_original_checkpoint_to_diffusers.py documents (written here
  independently of dxmi_jax.diffusers_io): temb.dense.{0,1} <-> time_embedding.linear_{1,2},
  down.i.block.j <-> down_blocks.i.resnets.j (nin_shortcut <-> conv_shortcut, temb_proj <->
  time_emb_proj), down.i.attn.j.{q,k,v,proj_out,norm} <-> attentions.j.{to_q,to_k,to_v,to_out.0,
  group_norm} (1x1 convs vs Linear), down.i.downsample.conv <-> downsamplers.0.conv,
  mid.block_{1,2} <-> mid_block.resnets.{0,1}, mid.attn_1 <-> mid_block.attentions.0,
  up.i <-> up_blocks.(n-1-i), upsample.conv <-> upsamplers.0.conv, norm_out <-> conv_norm_out."""
  out = {}
  attn_names = {"to_q": "q", "to_k": "k", "to_v": "v", "group_norm": "norm"}
  for key, v in diffusers_sd.items():
    p = key.split(".")
    if p[0] == "time_embedding":
      new = ["temb", "dense", str(int(p[1][-1]) - 1)] + p[2:]
    elif p[0] == "conv_norm_out":
      new = ["norm_out"] + p[1:]
    elif p[0] in ("conv_in", "conv_out"):
      new = p
    elif p[0] in ("down_blocks", "up_blocks", "mid_block"):
      if p[0] == "mid_block":
        side, rest = ["mid"], p[1:]
        head = {"resnets": lambda j: f"block_{int(j) + 1}", "attentions": lambda j: "attn_1"}[rest[0]](rest[1])
        new_head, rest = [head], rest[2:]
      else:
        lev = int(p[1]) if p[0] == "down_blocks" else num_levels - 1 - int(p[1])
        side, rest = [p[0].split("_")[0], str(lev)], p[2:]
        kind = {"resnets": "block", "attentions": "attn", "downsamplers": "downsample", "upsamplers": "upsample"}
        new_head = [kind[rest[0]]] + ([rest[1]] if rest[0] in ("resnets", "attentions") else [])
        rest = rest[2:]
      if new_head[0].startswith("attn"):
        rest = ["proj_out"] + rest[2:] if rest[0] == "to_out" else [attn_names[rest[0]]] + rest[1:]
        if rest == [rest[0], "weight"] and rest[0] != "norm":
          v = v[:, :, None, None]  # Linear -> 1x1 conv
      else:
        rest = [{"conv_shortcut": "nin_shortcut", "time_emb_proj": "temb_proj"}.get(rest[0], rest[0])] + rest[1:]
      new = side + new_head + rest
    else:
      raise AssertionError(key)
    out[".".join(new)] = v
  return out


@pytest.mark.torch
def test_diffusers_ddpm_equals_the_fastdpm_checkpoint(diffusers, tmp_path):
  """A diffusers DDPM and its FastDPM-format checkpoint (our from_torch path) are one network."""
  import torch  # pylint: disable=import-outside-toplevel

  cfg = dict(CONFIGS["google_ddpm_like"], block_out_channels=(32, 64, 64), layers_per_block=1, sample_size=16)
  cfg["down_block_types"] = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
  cfg["up_block_types"] = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
  m = _random_unet(diffusers, cfg, seed=7)
  m.save_pretrained(tmp_path / "hf")
  sd = _fastdpm_state_dict(m.state_dict(), num_levels=3)
  assert "down.0.downsample.conv.weight" in sd and "up.2.upsample.conv.weight" in sd
  assert sd["down.1.attn.0.q.weight"].shape == (64, 64, 1, 1)
  torch.save({"state_dict": sd}, tmp_path / "fastdpm.pt")
  fastdpm_cfg = dict(
    ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, dropout=0.0
  )  # the official DDPM's own settings otherwise (sin first, right/bottom pad, one head, eps 1e-6)
  model_t, params_t = convert.from_torch(tmp_path / "fastdpm.pt", "ddpm_unet", **fastdpm_cfg)
  model_d, params_d = convert.from_diffusers(tmp_path / "hf")
  assert model_d == model_t
  _tree_equal(params_d, params_t)
  x = _inputs(model_t)
  _assert_close(_our_forward(model_t, params_t, x, TIMES), _their_forward(m, x, TIMES))


@pytest.mark.torch
def test_to_diffusers_loads_in_diffusers_and_matches(diffusers, tmp_path):
  model = registry.build("ddpm_unet", OURS)
  params = _random_params(OURS, seed=3)
  d = convert.to_diffusers(model, params, tmp_path / "unet")
  m = diffusers.UNet2DModel.from_pretrained(d).eval()
  x = _inputs(model, seed=4)
  _assert_close(_our_forward(model, params, x, TIMES), _their_forward(m, x, TIMES))
  # the FastDPM-style network (sin first, right/bottom pad, one head) exports as well
  cfg = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=8, norm_groups=8)
  model, params = registry.build("ddpm_unet", cfg), _random_params(cfg, seed=5)
  m = diffusers.UNet2DModel.from_pretrained(convert.to_diffusers(model, params, tmp_path / "fastdpm")).eval()
  x = _inputs(model, seed=6)
  _assert_close(_our_forward(model, params, x, TIMES), _their_forward(m, x, TIMES))


def _load_example():
  spec = importlib.util.spec_from_file_location("sample_exported", EXAMPLE)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.torch
def test_exported_sampler_json_and_example_reproduce_our_chain(diffusers, tmp_path):
  """The sampler JSON holds the policy's own steps; the plain-PyTorch example samples our chain."""
  import torch  # pylint: disable=import-outside-toplevel

  cfg = dict(OURS, resolution=8, level_channels=(24, 32), attn_resolutions=(4,))
  model = registry.build("ddpm_unet", cfg)
  policy = VARPolicy(model, 3, trainable_sigma="fix_last")
  pp = {"net": _random_params(cfg, seed=8), "log_sigma": jnp.log(jnp.asarray([0.31, 0.17, 0.5], jnp.float32))}
  d = convert.to_diffusers(model, pp["net"], tmp_path / "run", policy=policy, policy_params=pp)
  with open(os.path.join(d, "dxmi_sampler.json")) as f:
    spec = json.load(f)
  assert spec["num_steps"] == 3 and spec["sampler"] == "ancestral"
  np.testing.assert_array_equal(np.float32(spec["timesteps"]), policy.schedule.tau)
  assert not float(spec["timesteps"][1]).is_integer()
  np.testing.assert_allclose(spec["sigma"][:2], [0.31, 0.17], rtol=1e-6)  # learned sigmas
  assert spec["sigma"][2] == pytest.approx(0.001, rel=1e-6)  # fix_last: the schedule's last std
  # the example's chain vs ours with the same noise (torch's generator, replayed here)
  num, seed = 2, 11
  got = _load_example().sample(d, num, seed).numpy().transpose(0, 2, 3, 1)
  gen = torch.Generator().manual_seed(seed)
  x = jnp.asarray(torch.randn(num, 3, 8, 8, generator=gen).numpy().transpose(0, 2, 3, 1))
  with jax.default_matmul_precision("highest"):
    for t in range(3):
      z = jnp.asarray(torch.randn(num, 3, 8, 8, generator=gen).numpy().transpose(0, 2, 3, 1))
      x = policy.step(pp, x, jnp.int32(t), z).sample
  _assert_close(got, np.asarray(x))
  # and the script itself runs
  out = tmp_path / "s.npz"
  res = subprocess.run(
    [sys.executable, str(EXAMPLE), d, "--num=2", f"--out={out}"], capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 0, res.stderr
  with np.load(out) as z:
    assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (2, 8, 8, 3)


# ---------------------------------------------------------------------------------------------
# config.init.policy_checkpoint = a diffusers folder; export of a trained run.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.torch
def test_policy_checkpoint_folder_trains_and_exports(diffusers, tmp_path, caplog):
  """The smoke CIFAR-10 run starts from a diffusers folder (whose architecture replaces
  config.policy.net); its trained policy exports back to a folder that diffusers samples from."""
  from configs import cifar10  # pylint: disable=import-outside-toplevel
  from dxmi_jax import experiment, init, modes  # pylint: disable=import-outside-toplevel

  cfg = dict(CONFIGS["uneven_multihead_pad1"], block_out_channels=(24, 32), layers_per_block=1)
  cfg.update(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
  m = _random_unet(diffusers, cfg, seed=9)
  m.save_pretrained(tmp_path / "hf")

  def smoke():  # the CIFAR-10 smoke run, smaller still: 16x16 synthetic images, T=2, one iteration
    c = cifar10.get_config("smoke")
    c.data.image_size, c.policy.num_steps = 16, 2
    c.training.num_iters = c.training.checkpoint_every = 1
    c.training.eval_at_start = False
    c.sample.num = c.sample.batch_size = 8
    c.init.policy_checkpoint = str(tmp_path / "hf")
    return c

  c = smoke()
  exp = experiment.build(c)
  net = c.policy.net
  assert (net.arch, net.level_channels, net.attn_head_channels, net.downsample_padding) == ("ddpm_unet", (24, 32), 8, 1)
  assert net.dropout == 0.1  # the config's runtime field is kept
  logged = [r.getMessage() for r in caplog.records if "replaced config.policy.net" in r.getMessage()]
  assert len(logged) == 1 and "level_channels" in logged[0] and str(tmp_path / "hf") in logged[0], logged
  state = init.load_pretrained_into(exp, exp.abstract_state())
  _, want = convert.from_diffusers(tmp_path / "hf")
  _tree_equal(state.policy.params["net"], want)
  wd = str(tmp_path / "wd")
  c2 = smoke()
  modes.run(c2, wd, "train")
  out = tmp_path / "export"
  assert convert.main(["--to_diffusers", f"--workdir={wd}", f"--out={out}"]) == 0
  policy, pp = convert.workdir_policy(wd)
  m2 = diffusers.UNet2DModel.from_pretrained(out).eval()
  x = _inputs(policy.net, seed=10)
  _assert_close(_our_forward(policy.net, pp["net"], x, TIMES), _their_forward(m2, x, TIMES))
  with open(out / "dxmi_sampler.json") as f:
    spec = json.load(f)
  assert spec["num_steps"] == c2.policy.num_steps
  np.testing.assert_allclose(spec["sigma"][:-1], np.exp(np.asarray(pp["log_sigma"]))[:-1], rtol=1e-6)
  assert _load_example().sample(str(out), 1, 0).shape == (1, 3, 16, 16)


def test_policy_checkpoint_folder_errors(tmp_path):
  from configs import cifar10  # pylint: disable=import-outside-toplevel
  from dxmi_jax import experiment  # pylint: disable=import-outside-toplevel

  model = registry.build("ddpm_unet", dict(OURS, resolution=32))
  d = convert.to_diffusers(model, _random_params(dict(OURS, resolution=32)), tmp_path / "unet")
  c = cifar10.get_config("smoke")
  c.init.policy_checkpoint = d
  c.policy.kind = "edm"
  with pytest.raises(ConfigError, match="config.init.policy_checkpoint: .*config.policy.kind='edm'"):
    experiment.build(c)
  cfg_path = os.path.join(d, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["resnet_time_scale_shift"] = "scale_shift"
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  c = cifar10.get_config("smoke")
  c.init.policy_checkpoint = d
  with pytest.raises(ConfigError, match="resnet_time_scale_shift='scale_shift'"):
    experiment.build(c)
