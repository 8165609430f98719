"""CIFAR-10 T=4 with the DDGAN backbone: generator, checkpoint import, sampler, config, smoke run.

Parity is against tests/golden/ddgan (README there): outputs of DDGAN's own code
(NVlabs/denoising-diffusion-gan) on CPU for small generator configs with random
weights, its posterior coefficients, one ``sample_posterior`` step at mixed
per-sample t and one 4-step ``sample_from_model`` rollout with the recorded z and
noise.  Tolerance 1e-4 (float32, highest matmul precision).  Reading the .pt
files needs torch; those tests skip without it.
"""

import argparse
import ast
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import golden_path
from dxmi_jax import convert, dxmi, experiment, modes
from dxmi_jax.errors import CheckpointError
from dxmi_jax.models import registry
from dxmi_jax.models.ddgan import ddgan_cifar10
from dxmi_jax.policies import build_policy
from dxmi_jax.policies.ddgan import ENTROPY_SIGMA_FLOOR, DDGANPolicy, ddgan_schedule, latent_from_noise

ARCH = "ddgan_ncsnpp"
TOL = dict(rtol=1e-4, atol=1e-4)
# The golden configs (tests/golden/ddgan/README.md), in our field names.
SMALL = {
  "small": dict(
    image_size=16,
    num_channels_dae=16,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    nz=8,
    z_emb_dim=16,
    n_mlp=2,
  ),
  "small_nofir": dict(
    image_size=8,
    num_channels_dae=16,
    ch_mult=(1, 2),
    num_res_blocks=2,
    attn_resolutions=(8,),
    nz=4,
    z_emb_dim=8,
    n_mlp=1,
    fir=False,
    skip_rescale=False,
    not_use_tanh=True,
  ),
  "tiny_nopyramid": dict(
    image_size=8,
    num_channels_dae=8,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    nz=4,
    z_emb_dim=8,
    n_mlp=1,
    progressive_input="none",
  ),
}


@pytest.fixture(autouse=True)
def _highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture
def torch():
  return pytest.importorskip("torch", reason="torch (extra [convert]) reads the golden .pt files")


def _nhwc(a):
  return np.asarray(a, np.float32).transpose(0, 2, 3, 1)


def _listing(name):
  out = {}
  for line in golden_path(f"ddgan/{name}").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
      key, shape = line.split("\t")[:2]
      out[key] = tuple(ast.literal_eval(shape))
  return out


def _random_params(policy, cfg, scale=0.1):
  """{"net", "log_sigma"} with N(0, scale^2) weights from numpy: no init program to compile."""
  rng = np.random.default_rng(0)
  net = jax.tree.map(
    lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), registry.param_shapes(ARCH, cfg)
  )
  return {"net": net, "log_sigma": jnp.asarray(policy.init_log_sigma())}


def _golden_policy(torch):
  del torch
  model, params = convert.from_torch(str(golden_path("ddgan/small.pt")), ARCH, **SMALL["small"])
  policy = build_policy({"policy": {"kind": "ddgan", "num_steps": 4}}, model)
  return policy, {"net": params, "log_sigma": jnp.asarray(policy.init_log_sigma())}


# ------------------------------------------------------------------------------ generator
def test_exp1_generator_has_ddgans_layout_and_size():
  """DDGAN exp1: 384 tensors, 48,432,515 parameters, DDGAN's keys and shapes (eval_shape only)."""
  shapes = registry.param_shapes(ARCH)
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == 48_432_515
  ours = {k[len("module.") :]: v for k, v in convert.expected_state_dict_shapes(ARCH).items()}
  assert len(ours) == 384
  assert ours == _listing("cifar10_exp1_keys.txt")
  assert dict(registry.default_config(ARCH)) == dict(ddgan_cifar10())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_layouts_match_ddgan(name):
  ours = {k[len("module.") :]: v for k, v in convert.expected_state_dict_shapes(ARCH, SMALL[name]).items()}
  assert ours == _listing(f"{name}_keys.txt")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_generator_matches_ddgan(torch, name):
  model, params = convert.from_torch(str(golden_path(f"ddgan/{name}.pt")), ARCH, **SMALL[name])
  g = np.load(golden_path(f"ddgan/{name}_io.npz"))
  out = jax.jit(lambda p, x, t, z: model.apply({"params": p}, x, t, z=z))(
    params, _nhwc(g["x"]), g["t"].astype(np.float32), g["z"]
  )
  np.testing.assert_allclose(np.asarray(out), _nhwc(g["out"]), **TOL)


def test_generator_needs_z_and_rejects_unsupported_settings():
  model = registry.build(ARCH, SMALL["tiny_nopyramid"])
  params = _random_params(DDGANPolicy(model, 4), SMALL["tiny_nopyramid"])["net"]
  with pytest.raises(ValueError, match="needs the latent z"):
    model.apply({"params": params}, jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,)))
  with pytest.raises(ValueError, match="progressive='residual'"):
    registry.init(ARCH, dict(SMALL["tiny_nopyramid"], progressive="residual"))


# ------------------------------------------------------------------------------- checkpoints
def test_round_trip_writes_ddgans_netG_layout(torch, tmp_path):
  """to_torch writes a bare DDP-style state_dict (what DDGAN's test_ddgan.py loads); exact both ways."""
  src = golden_path("ddgan/small.pt")
  _, params = convert.from_torch(str(src), ARCH, **SMALL["small"])
  out = tmp_path / "netG_7.pth"
  convert.to_torch(params, ARCH, str(out), **SMALL["small"])
  a = torch.load(str(src), weights_only=True)
  b = torch.load(str(out), weights_only=True)
  assert sorted(b) == sorted(a) and all(k.startswith("module.") for k in b)  # (order is free)
  for k in a:
    assert torch.equal(a[k], b[k]), k
  # DDGAN's own loader: strip 7 characters, strict load_state_dict (checked against the key listing)
  assert {k[7:]: tuple(v.shape) for k, v in b.items()} == _listing("small_keys.txt")


def test_reads_training_content_pth(torch, tmp_path):
  """content.pth: netG_dict beside netD_dict, the optimisers and the pickled argparse flags."""
  sd = torch.load(str(golden_path("ddgan/small.pt")), weights_only=True)
  content = {
    "epoch": 3,
    "global_step": 12,
    "args": argparse.Namespace(nz=8, lr_g=1.6e-4, ch_mult=[1, 2, 2]),
    "netG_dict": sd,
    "optimizerG": {"state": {}, "param_groups": [{"lr": 1.6e-4, "params": [0]}]},
    "schedulerG": {"last_epoch": 3},
    "netD_dict": {"module.w": torch.zeros(3)},
    "optimizerD": {"state": {}, "param_groups": []},
    "schedulerD": {"last_epoch": 3},
  }
  path = tmp_path / "content.pth"
  torch.save(content, str(path))
  _, from_content = convert.from_torch(str(path), ARCH, **SMALL["small"])
  _, from_netg = convert.from_torch(str(golden_path("ddgan/small.pt")), ARCH, **SMALL["small"])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), from_content, from_netg)


def test_wrong_config_names_the_keys(torch):
  with pytest.raises(CheckpointError, match="(?s)does not fit arch 'ddgan_ncsnpp'.*mis-shaped.*z_transform.1.weight"):
    convert.from_torch(str(golden_path("ddgan/small.pt")), ARCH, **dict(SMALL["small"], nz=9))


# ------------------------------------------------------------------------------------ sampler
def test_schedule_matches_ddgans_posterior_coefficients():
  g = np.load(golden_path("ddgan/small_io.npz"))
  ours = ddgan_schedule(4, 0.1, 20.0)
  for k, v in ours.items():
    np.testing.assert_allclose(v, g["coef/" + k], rtol=1e-6, atol=1e-9, err_msg=k)
  np.testing.assert_allclose(ours["betas"], g["coef/sigma_schedule_betas"][1:], rtol=0, atol=0)


def test_policy_schedule_fix_last():
  """Sampling order t = T-1-i; sigma = posterior std, 0 at the last step; fix_last keeps it."""
  model = registry.build(ARCH, SMALL["tiny_nopyramid"])
  p = DDGANPolicy(model, 4)
  c = ddgan_schedule(4)
  std = np.sqrt(c["posterior_variance"])[::-1]
  np.testing.assert_allclose(p.schedule_sigma[:3], std[:3], rtol=1e-6)
  assert p.schedule_sigma[3] == 0.0
  np.testing.assert_allclose(np.exp(p.init_log_sigma()[:3]), std[:3], rtol=1e-6)
  np.testing.assert_array_equal(p.trainable_log_sigma_mask, [True, True, True, False])
  np.testing.assert_array_equal(p.init_velocity_scale(), c["betas"][::-1])
  np.testing.assert_array_equal(np.asarray(p.net_time(jnp.arange(4))), [3.0, 2.0, 1.0, 0.0])
  params = _random_params(p, SMALL["tiny_nopyramid"])
  params["log_sigma"] = params["log_sigma"] + 1.0  # moves the noise of t < T-1 only
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
  out = jax.jit(p.step)(params, x, jnp.arange(4), jnp.ones_like(x))
  np.testing.assert_allclose(np.asarray(out.sigma[:3]), std[:3] * np.e, rtol=1e-5)
  assert float(out.sigma[3]) == 0.0
  np.testing.assert_allclose(np.asarray(out.sample[3]), np.asarray(out.mean[3]), rtol=0, atol=0)
  np.testing.assert_allclose(np.asarray(out.log_sigma), np.log([*(std[:3] * np.e), ENTROPY_SIGMA_FLOOR]), rtol=1e-5)


def test_step_matches_ddgan_sample_posterior(torch):
  """One step at mixed per-sample t (DDGAN indices 3, 2, 1, 0) with DDGAN's z and noise."""
  policy, params = _golden_policy(torch)
  g = np.load(golden_path("ddgan/small_io.npz"))
  t = 3 - g["t"].astype(np.int32)
  out = jax.jit(lambda p, x, n, z: policy.step(p, x, t, n, z=z))(params, _nhwc(g["x"]), _nhwc(g["step/noise"]), g["z"])
  x0 = jax.jit(lambda p, x, z: policy.predict_x0(p, x, t, z))(params, _nhwc(g["x"]), g["z"])
  np.testing.assert_allclose(np.asarray(x0), _nhwc(g["step/x0"]), **TOL)
  np.testing.assert_allclose(np.asarray(out.sample), _nhwc(g["step/x_prev"]), **TOL)


def test_rollout_matches_ddgan_sample_from_model(torch):
  policy, params = _golden_policy(torch)
  g = np.load(golden_path("ddgan/small_io.npz"))

  @jax.jit
  def run(p, x, noise, zs):
    def body(x, inp):
      t, n, z = inp
      out = policy.step(p, x, jnp.full((x.shape[0],), t, jnp.int32), n, z=z)
      return out.sample, out.sample

    return jax.lax.scan(body, x, (jnp.arange(4), noise, zs))[1]

  noise = np.stack([_nhwc(n) for n in g["rollout/noise"]])
  states = run(params, _nhwc(g["rollout/x_init"]), noise, g["rollout/z"])
  for t in range(4):
    np.testing.assert_allclose(np.asarray(states[t]), _nhwc(g["rollout/states"][t + 1]), **TOL, err_msg=f"step {t}")
  np.testing.assert_allclose(np.asarray(states[-1]), _nhwc(g["rollout/x_final"]), **TOL)


def test_latent_is_a_deterministic_standard_normal_hash_of_the_noise():
  noise = jax.random.normal(jax.random.PRNGKey(0), (4096, 4, 4, 3))
  z = latent_from_noise(noise, 16)
  assert z.shape == (4096, 16)
  np.testing.assert_array_equal(np.asarray(z), np.asarray(latent_from_noise(noise, 16)))
  zs = np.asarray(z).ravel()
  assert abs(zs.mean()) < 0.02 and abs(zs.std() - 1.0) < 0.02
  # per sample: changing one noise entry of sample 0 changes only z[0], and entirely
  z2 = np.asarray(latent_from_noise(noise.at[0, 1, 2, 0].add(1e-3), 16))
  assert np.all(z2[0] != np.asarray(z)[0]) and np.array_equal(z2[1:], np.asarray(z)[1:])
  # z is not correlated with the noise it is hashed from
  flat = np.asarray(noise).reshape(4096, -1)
  corr = np.corrcoef(np.concatenate([flat[:, :8], np.asarray(z)[:, :8]], 1).T)[:8, 8:]
  assert np.abs(corr).max() < 0.1


def test_rollout_is_a_pure_function_of_the_noise():
  """Through dxmi.rollout (z from the step noise): same noise, same chain; new noise, new chain."""
  model = registry.build(ARCH, SMALL["tiny_nopyramid"])
  policy = DDGANPolicy(model, 4)
  params = _random_params(policy, SMALL["tiny_nopyramid"])
  x0 = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
  noise = jax.random.normal(jax.random.PRNGKey(2), (4, 2, 8, 8, 3))
  roll = jax.jit(lambda p, x, n: dxmi.rollout(policy, p, x, n).final)
  a, b = roll(params, x0, noise), roll(params, x0, noise)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # the noise enters through z even where it is not added: the last step (sigma 0)
  c = roll(params, x0, noise.at[3].add(1.0))
  assert float(jnp.max(jnp.abs(c - a))) > 1e-4


def test_build_policy_errors():
  ddgan_net = registry.build(ARCH, SMALL["tiny_nopyramid"])
  with pytest.raises(ValueError, match="config.policy.beta_max"):
    build_policy({"policy": {"kind": "ddgan", "num_steps": 4, "beta_min": 1.0, "beta_max": 0.5}}, ddgan_net)
  with pytest.raises(ValueError, match="config.policy.trainable_sigma"):
    build_policy({"policy": {"kind": "ddgan", "num_steps": 4, "trainable_sigma": "yes"}}, ddgan_net)
  with pytest.raises(ValueError, match="ddgan_ncsnpp"):
    build_policy({"policy": {"kind": "ddgan", "num_steps": 4}}, registry.build("igebm", {"nh": 4}))


# ------------------------------------------------------------------------------------- config
def _config(variant="t4_ddgan"):
  from configs import cifar10  # pylint: disable=import-outside-toplevel

  return cifar10.get_config(variant)


def test_t4_ddgan_config_is_the_official_yaml():
  c = _config()
  assert (c.policy.kind, c.policy.num_steps, c.policy.trainable_sigma) == ("ddgan", 4, "fix_last")
  assert (c.policy.beta_min, c.policy.beta_max) == (0.1, 20.0)
  assert c.policy.net.arch == ARCH and c.policy.net.nz == 100 and c.policy.net.n_mlp == 4
  assert c.dxmi.value_resample and c.dxmi.policy_minibatches == 1
  assert (c.dxmi.tau1, c.dxmi.tau2, c.dxmi.gamma, c.dxmi.adavelreg, c.dxmi.time_cost_sig) == (0.1, 0.01, 1.0, 0.99, 1.0)
  assert (c.optim.policy, c.optim.policy_lr, c.optim.policy_sigma_lr, c.optim.value_lr) == ("adam", 1e-7, 1e-5, 1e-5)
  assert c.optim.policy_grad_clip == 0.1 and c.optim.value_grad_clip <= 0
  assert (c.training.batch_size, c.training.num_iters, c.training.seed) == (128, 39000, 112233)
  assert c.init.policy_checkpoint.endswith("ddgan_cifar10_exp1/netG_1200.pth")
  assert c.value.arch == "igebm" and c.value.nh == 128
  with pytest.raises(ValueError, match="pick one"):
    _config("t4,t4_ddgan")
  assert _config("smoke,t4_ddgan").policy.net.num_channels_dae == _config("t4_ddgan,smoke").policy.net.num_channels_dae


def test_t4_ddgan_config_builds_the_exp1_policy():
  c = _config()
  c.data.name = "synthetic"
  c.training.batch_size = 8
  c.init.policy_checkpoint = ""
  exp = experiment.build(c)
  shapes = exp.abstract_state()
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes.policy.params["net"])) == 48_432_515
  assert shapes.policy.params["log_sigma"].shape == (4,)
  assert isinstance(exp.policy, DDGANPolicy) and exp.dxmi.value_resample


def test_t4_ddgan_starts_from_a_ddgan_netG_file(torch, tmp_path):
  """config.init.policy_checkpoint = a DDGAN netG_*.pth: converted on the fly into the policy."""
  from dxmi_jax import init  # pylint: disable=import-outside-toplevel

  c = _config("t4_ddgan,smoke")
  exp = experiment.build(c)
  fields = {k: v for k, v in c.policy.net.items() if k != "arch"}
  net = _random_params(exp.policy, fields)["net"]
  path = tmp_path / "netG_1200.pth"
  convert.to_torch(net, ARCH, str(path), **fields)
  c.init.policy_checkpoint = str(path)
  exp = experiment.build(c)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), exp.abstract_state())
  state = init.load_pretrained_into(exp, zeros)
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state.policy.params["net"], net
  )


def test_t4_ddgan_smoke_trains_and_samples(tmp_path):
  c = _config("t4_ddgan,smoke")
  wd = str(tmp_path / "run")
  out = modes.run(c, wd, "train")
  recs = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in recs if r["kind"] == "train"][-1] == c.training.num_iters == 2
  assert np.isfinite(out["ebm/d_loss"]) and np.isfinite(out["sampler/sampler_loss"])
  modes.run(c, wd, "sample")
  with np.load(os.path.join(wd, "samples.npz")) as z:
    assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (c.sample.num, 32, 32, 3)
