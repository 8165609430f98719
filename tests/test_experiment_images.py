"""Image experiments: the configs' real architectures, their :smoke runs, image validation, optimiser parity."""

import json
import os

import jax
import numpy as np
import pytest

from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import dxmi_config, experiment, init, modes, optim
from dxmi_jax.errors import ConfigError

CONFIGS = {
  "cifar10": ("configs.cifar10", ""),
  "imagenet64": ("configs.imagenet64", ""),
  "imagenet64_t4": ("configs.imagenet64", "t4"),
  "lsun_bedroom": ("configs.lsun_bedroom", ""),
}


def get(name, variant=None):
  import importlib  # pylint: disable=import-outside-toplevel

  module, v = CONFIGS[name]
  return importlib.import_module(module).get_config(variant if variant is not None else v)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
  "name,policy_params,T",
  [
    ("cifar10", 35_746_307, 10),
    ("imagenet64", 295_899_267, 10),
    ("imagenet64_t4", 295_899_267, 4),
    ("lsun_bedroom", 526_304_771, 4),
  ],
)
def test_real_configs_build_the_official_architectures(name, policy_params, T):
  """The configs carry the real networks: parameter counts of the official listings (eval_shape only)."""
  c = get(name)
  c.data.name = "synthetic"  # the real data is not here; the networks are what we check
  c.training.batch_size = 8
  c.init.policy_checkpoint = ""
  c.data.num_classes = c.policy.net.get("num_classes") or 0
  exp = experiment.build(c)
  shapes = exp.abstract_state()
  assert _count(shapes.policy.params["net"]) == policy_params
  assert shapes.policy.params["log_sigma"].shape == (T,)
  assert _count(shapes.value.params) == 5_134_595  # IGEBMEncoderV2 nh128
  assert exp.dxmi.num_steps == T


def test_real_config_hyperparameters():
  """Trainer semantics per experiment (reference §5 table)."""
  cif, imn, imn4 = get("cifar10"), get("imagenet64"), get("imagenet64_t4")
  assert (cif.optim.policy, cif.optim.policy_lr, cif.optim.policy_sigma_lr, cif.optim.policy_grad_clip) == (
    "adam",
    1e-7,
    1e-5,
    0.1,
  )
  assert cif.dxmi.policy_minibatches == 1 and cif.dxmi.policy_train_mode and cif.optim.value_grad_clip <= 0
  assert cif.training.batch_size == 128 and cif.training.seed == 112233 and cif.sample.rounding == "round"
  assert (imn.optim.policy, imn.optim.policy_lr, imn.optim.policy_sigma_lr) == ("radam", 1e-8, 1e-6)
  assert imn.optim.policy_grad_clip <= 0 and imn.optim.value_grad_clip == 0.1
  assert imn.dxmi.policy_minibatches == 10 and imn.dxmi.skip_sampler_tau == 3
  assert (
    imn4.policy.num_steps,
    imn4.policy.rho,
    imn4.policy.stochastic_last,
    imn4.dxmi.skip_sampler_tau,
    imn4.dxmi.policy_minibatches,
  ) == (4, 4.0, True, 0, 4)
  assert imn.sample.rounding == "truncate" and imn.policy.net.dtype == "bfloat16"
  for c in (cif, imn):
    assert (c.dxmi.tau1, c.dxmi.tau2, c.dxmi.gamma, c.dxmi.adavelreg) == (0.1, 0.01, 1.0, 0.99)


def test_missing_data_messages():
  with pytest.raises(ConfigError, match="config.data.*(tfds build|tfds_data_dir)"):
    experiment.build(_without_checkpoint(get("cifar10")))
  c = _without_checkpoint(get("imagenet64"))
  c.data.path = "/nonexistent/ILSVRC2012/train"
  with pytest.raises(ConfigError, match="(?s)config.data.*(layout|not found|does not exist)"):
    experiment.build(c)


def _without_checkpoint(c):
  c.init.policy_checkpoint = ""
  c.data.tfds_data_dir = "/nonexistent/tfds"
  return c


@pytest.mark.parametrize("name", ["cifar10", "imagenet64", "lsun_bedroom"])
def test_smoke_variant_trains_and_samples(name, tmp_path):
  c = get(name, "smoke" if name != "imagenet64" else "t4,smoke")
  wd = str(tmp_path / name)
  out = modes.run(c, wd, "train")
  recs = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in recs if r["kind"] == "train"][-1] == c.training.num_iters
  assert np.isfinite(out["ebm/d_loss"]) and np.isfinite(out["sampler/sampler_loss"])
  assert os.path.getsize(os.path.join(wd, "samples_grid.png")) > 100
  modes.run(c, wd, "sample")
  with np.load(os.path.join(wd, "samples.npz")) as z:
    imgs = z["arr_0"]
    assert imgs.dtype == np.uint8 and imgs.shape == (c.sample.num, c.data.image_size, c.data.image_size, 3)
    if c.data.class_cond:
      assert z["arr_1"].shape == (c.sample.num,) and z["arr_1"].max() < c.data.num_classes
    else:
      assert "arr_1" not in z.files


def _smoke(name="cifar10"):
  return get(name, "smoke")


@pytest.mark.parametrize(
  "mutate,match",
  [
    (lambda c: setattr(c.data, "image_size", 64), "does not match the data.s image size 64"),
    (lambda c: setattr(c.policy.net, "resolution", 16), "resolution=16 does not match"),
    (lambda c: setattr(c.sample, "labels", "1,2"), "unconditional"),
    (lambda c: setattr(c.sample, "rounding", "nearest"), "config.sample.rounding"),
  ],
)
def test_image_config_errors(mutate, match):
  c = _smoke()
  mutate(c)
  with pytest.raises(ConfigError, match=match):
    experiment.build(c)


def test_class_count_mismatch():
  c = get("imagenet64", "smoke")
  c.data.num_classes = 1000
  with pytest.raises(ConfigError, match="num_classes"):
    experiment.build(c)
  c = get("imagenet64", "smoke")
  c.sample.labels = "3,12"
  with pytest.raises(ConfigError, match=r"config.sample.labels: \[12\]"):
    experiment.build(c)


def _zeros_state(exp):
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), exp.abstract_state())


def test_checkpoint_log_betas_must_match_T(tmp_path):
  """A pretrained policy whose log_betas has another T is refused, naming both."""
  c = _smoke()
  exp = experiment.build(c)
  state = exp.abstract_state()
  net = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state.policy.params["net"])
  ckpt_lib.save_params(str(tmp_path / "pre"), {"net": net, "log_sigma": np.zeros((4,), np.float32)}, {})
  c.init.policy_checkpoint = str(tmp_path / "pre")
  exp = experiment.build(c)
  with pytest.raises(ConfigError, match="log_betas has 4 steps but config.policy.num_steps is 10"):
    init.load_pretrained_into(exp, _zeros_state(exp))
  bad = jax.tree.map(lambda a: a, net)
  bad["conv_in"]["kernel"] = np.zeros((3, 3, 3, 7), np.float32)
  ckpt_lib.save_params(str(tmp_path / "pre2"), {"net": bad}, {})
  c.init.policy_checkpoint = str(tmp_path / "pre2")
  exp = experiment.build(c)
  with pytest.raises(ConfigError, match="mis-shaped.*conv_in.*kernel"):
    init.load_pretrained_into(exp, _zeros_state(exp))


def test_optimizers_match_torch():
  """optax Adam/RAdam with our settings follow torch.optim.Adam/RAdam (float64, 12 steps).

  RAdam differs only in where eps enters (torch: sqrt(v) + eps then / sqrt(bc2); optax:
  sqrt(v / bc2) + eps), a 1e-10 relative effect at eps = 1e-8.
  """
  torch = pytest.importorskip("torch", reason="torch (extra [convert]) is needed for this parity check")
  import optax  # pylint: disable=import-outside-toplevel
  from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel

  jax.config.update("jax_enable_x64", True)
  try:
    rng = np.random.default_rng(0)
    w0, grads = rng.standard_normal(5), rng.standard_normal((12, 5))
    hp = ConfigDict({"b1": 0.9, "b2": 0.999, "eps": 1e-8})
    for name, make_torch in [("adam", torch.optim.Adam), ("radam", torch.optim.RAdam)]:
      p = torch.nn.Parameter(torch.tensor(w0))
      topt = make_torch([p], lr=1e-2)
      tx = optim.OPTIMIZERS[name](1e-2, hp)
      w = jax.numpy.asarray(w0)
      s = tx.init(w)
      for g in grads:
        p.grad = torch.tensor(g)
        topt.step()
        u, s = tx.update(jax.numpy.asarray(g), s, w)
        w = optax.apply_updates(w, u)
      np.testing.assert_allclose(np.asarray(w), p.detach().numpy(), rtol=1e-9, atol=1e-9, err_msg=name)
  finally:
    jax.config.update("jax_enable_x64", False)


def test_lowmem_variant_resolves_per_device_count():
  """:lowmem sets every memory option; its policy-gradient chunks follow the device count."""
  for name, batch in (("imagenet64", 128), ("lsun_bedroom", 64)):
    c = get(name, "lowmem")
    assert (c.policy.net.remat, c.value.remat, c.training.fsdp, c.policy.net.attention_chunk) == (
      "blocks",
      "blocks",
      True,
      256,
    )
    assert c.training.batch_size == batch and c.perf.policy_grad_chunks == 1
    assert [dxmi_config.policy_grad_chunks(c, n) for n in (1, 8)] == [batch // 4, batch // 32]


def test_lowmem_step_matches_the_plain_step():
  """One iteration of imagenet64:t4,smoke with the memory options on (remat, attention and policy
  gradient in chunks, FSDP) gives the plain iteration's numbers up to float32 summation order."""
  from dxmi_jax import parallel, train  # pylint: disable=import-outside-toplevel

  out = {}
  for mode in ("plain", "lowmem"):
    c = get("imagenet64", "t4,smoke" + (",lowmem" if mode == "lowmem" else ""))
    if mode == "lowmem":
      c.policy.net.attention_chunk = 16  # the smoke net attends over 64 tokens: 4 query blocks
      c.training.fsdp_min_size = 1024
    c.dxmi.policy_train_mode = False  # chunked rows draw other dropout masks
    exp = experiment.build(c)
    assert exp.perf.policy_grad_chunks == (2 if mode == "lowmem" else 1)
    mesh = parallel.make_mesh()
    state = train.initial_state(exp, mesh)
    batch = parallel.global_batch_from_local(exp.data.local_batch(0), mesh)
    state, metrics = train.compile_train_step(exp, mesh)(state, batch)
    out[mode] = (jax.device_get(state.policy.params), jax.device_get(state.value.params), jax.device_get(metrics))
  for a, b in zip(jax.tree.leaves(out["lowmem"][:2]), jax.tree.leaves(out["plain"][:2])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
  for k in ("ebm/d_loss", "sampler/sampler_loss"):
    np.testing.assert_allclose(out["lowmem"][2][k], out["plain"][2][k], rtol=1e-4)
