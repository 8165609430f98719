"""The digits experiment: config variants, the classifier metric, and pretrain -> DxMI -> metric end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dxmi_jax import experiment, generation, image_export, modes, train
from dxmi_jax.data import digits as digits_data
from dxmi_jax.metrics import digits_classifier as dc
from dxmi_jax.metrics import features as features_lib


def _config(variant=""):
  from configs import digits  # pylint: disable=import-outside-toplevel

  return digits.get_config(variant)


# ------------------------------------------------------------------------- config
def test_config_variants():
  c = _config()
  assert (c.data.name, c.data.image_size, c.data.channels) == ("digits", 8, 1)
  assert (c.policy.kind, c.policy.num_steps, c.policy.net.arch, c.value.arch) == ("var", 10, "ddpm_unet", "igebm")
  # CIFAR-10 trainer semantics
  assert c.dxmi.policy_minibatches == 1 and c.dxmi.policy_train_mode and not c.dxmi.separate_energy
  assert c.optim.policy == "adam" and c.optim.policy_grad_clip == 0.1 and c.optim.value_grad_clip == 0.0
  assert _config("t4").policy.num_steps == 4
  t0 = _config("tau0")
  assert (t0.dxmi.tau1, t0.dxmi.tau2, t0.policy.num_steps) == (0.0, 0.0, 10) and c.dxmi.tau1 > 0 and c.dxmi.tau2 > 0
  # trains on fit, selects on val (never on test), and evaluates the starting sampler too
  assert (c.data.split, c.eval.evaluators, c.eval.digits_reference) == ("fit", "digits", "val")
  assert c.training.best_metric == "min:digits_fd" and c.training.eval_at_start and c.training.eval_every > 0
  # the τ study's grid: both weights scaled together; k = 1 is the default point, k = 0 the tau0 ablation
  for k in (0.0, 0.3, 1.0, 3.0):
    g = _config(f"t4,tauscale={k:g}")
    assert g.policy.num_steps == 4
    assert (g.dxmi.tau1, g.dxmi.tau2) == pytest.approx((0.1 * k, 0.01 * k), rel=1e-12, abs=0)
  assert (_config("tauscale=1").dxmi.tau1, _config("tauscale=1").dxmi.tau2) == (c.dxmi.tau1, c.dxmi.tau2)
  assert (_config("tauscale=0").dxmi.tau1, _config("tauscale=0").dxmi.tau2) == (t0.dxmi.tau1, t0.dxmi.tau2)
  for bad in ("tauscale=-0.5", "tauscale=abc", "tauscale=inf", "tauscale="):
    with pytest.raises(ValueError, match="expected a finite number >= 0"):
      _config(bad)
  # the two T=10 overshoot variants: learning rates only
  h, q = _config("lr_half"), _config("vlr_quarter")
  assert (h.optim.policy_lr, h.optim.policy_sigma_lr, h.optim.value_lr) == pytest.approx(
    (c.optim.policy_lr / 2, c.optim.policy_sigma_lr / 2, c.optim.value_lr / 2)
  )
  assert (q.optim.policy_lr, q.optim.policy_sigma_lr, q.optim.value_lr) == pytest.approx(
    (c.optim.policy_lr, c.optim.policy_sigma_lr, c.optim.value_lr / 4)
  )
  s = _config("smoke,t4")
  assert s.training.num_iters == 2 and s.pretrain.num_iters == 2 and s.policy.num_steps == 4
  with pytest.raises(ValueError, match="unknown variant"):
    _config("t7")


def test_bad_split_and_reference_are_named(tmp_path):
  from dxmi_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel

  c = _config("smoke")
  c.data.split = "validation"
  with pytest.raises(
    ConfigError, match=r"config\.data \(digits\): digits split \(config\.data\.split\) must be one of"
  ):
    modes.run(c, str(tmp_path / "a"), "train")
  c = _config("smoke")
  c.eval.digits_reference = "holdout"
  with pytest.raises(ConfigError, match=r"config\.eval\.digits_reference: expected one of"):
    modes.run(c, str(tmp_path / "b"), "train")
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_networks_fit_8x8():
  """The UNet keeps 8x8x1 and the IGEBM value (3 downsamplings: 8 -> 1) gives one number per image."""
  c = _config()
  exp = experiment.build(c)
  state = exp.abstract_state()
  x = jnp.zeros((2, 8, 8, 1))
  out = jax.eval_shape(lambda p: exp.policy.net.apply({"params": p}, x, jnp.ones((2,))), state.policy.params["net"])
  assert out.shape == (2, 8, 8, 1)
  v = jax.eval_shape(lambda p: exp.value_module.apply({"params": p}, x, jnp.zeros((2,), jnp.int32)), state.value.params)
  assert v.shape == (2, 1)


# ------------------------------------------------------------------------- metric
@pytest.fixture(scope="module")
def clf():
  return dc.default_classifier()


def test_classifier_accuracy(clf):
  assert clf.accuracy("test") >= 0.95


def test_metric_of_reference_against_itself(clf):
  test_images, labels = digits_data.digits_arrays("test")
  m = clf.evaluate(test_images, "test")
  assert abs(m["fd"]) < 1e-6
  assert m["precision"] == 1.0 and m["recall"] == 1.0  # every point lies inside its own k-NN ball
  assert m["num_samples"] == 355
  np.testing.assert_allclose(np.sum(m["class_hist"]), 1.0)


def test_metric_ranks_noise_far_below_real_digits(clf):
  train_images, _ = digits_data.digits_arrays("train")
  real = clf.evaluate(train_images, "test")  # all 1,442: recall depends on the sample count
  noise = clf.evaluate(np.random.default_rng(0).integers(0, 256, (400, 8, 8, 1)).astype(np.uint8), "test")
  assert real["fd"] < 0.1 * noise["fd"]
  assert real["precision"] > 0.85 and real["recall"] > 0.85
  assert noise["precision"] < 0.1


def test_metric_from_features_closed_form():
  """Equal covariances and a mean shift d: FD = |d|^2; all samples one class: TV to uniform = 0.9."""
  rng = np.random.default_rng(0)
  ref = rng.normal(size=(200, 5))
  delta = np.array([1.0, -2.0, 0.0, 0.5, 0.0])
  m = dc.metric_from_features(ref + delta, np.zeros(200, int), ref, np.full(10, 0.1))
  np.testing.assert_allclose(m["fd"], float(delta @ delta), rtol=1e-6)
  np.testing.assert_allclose(m["class_tv"], 0.9)
  assert m["class_hist"][0] == 1.0 and m["min_class_frac"] == 0.0


def test_metric_rejects_bad_images(clf):
  with pytest.raises(features_lib.EvaluationInputError, match="uint8"):
    clf.evaluate(np.zeros((4, 8, 8, 1), np.float32), "test")
  with pytest.raises(features_lib.EvaluationInputError, match=r"\(N, 8, 8, 1\)"):
    clf.evaluate(np.zeros((4, 16, 16, 1), np.uint8), "test")


# ---------------------------------------------------------------------- end to end
def test_pretrain_then_dxmi_then_metric(tmp_path, clf):
  """--mode=pretrain (2 steps), DxMI from it (2 steps), samples scored by the digits metric."""
  pre_dir, run_dir = str(tmp_path / "ddpm"), str(tmp_path / "dxmi")
  modes.run(_config("smoke,t4"), pre_dir, "pretrain")
  c = _config("smoke,t4")
  c.init.policy_checkpoint = pre_dir
  exp = experiment.build(c)
  loaded = train.load_pretrained(exp).policy.params["net"]
  metrics = modes.run(c, run_dir, "train")
  assert np.isfinite(metrics["sampler/sampler_loss"]) and np.isfinite(metrics["ebm/d_loss"])
  # the digits evaluator scored the start (step 0) and the end against val, and the best of them is kept
  from dxmi_jax import checkpoint as ckpt_lib, writers  # pylint: disable=import-outside-toplevel

  evals = {
    r["step"]: r["digits_fd"]
    for r in writers.read_jsonl(str(tmp_path / "dxmi" / "metrics.jsonl"))
    if r["kind"] == "eval"
  }
  assert sorted(evals) == [0, 2] and all(np.isfinite(v) for v in evals.values())
  assert metrics["digits_fd"] == evals[2]
  assert ckpt_lib.committed_steps(run_dir, best=True) == [min(evals, key=evals.get)]
  val_ref = clf.reference("val")[0].shape[0]
  assert val_ref == len(digits_data.digits_split_indices("val"))

  # the fine-tuned policy: read back from the run, started from the pretrained weights and moved by DxMI
  c2 = _config("smoke,t4")
  c2.init.policy_checkpoint = run_dir
  params = train.load_pretrained(experiment.build(c2)).policy.params
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params["net"]), jax.tree.leaves(loaded))]
  assert 0 < max(moved) < 1.0
  bs = c.sample.batch_size  # the train loop's evaluation used this shape: a compilation-cache hit
  gen = generation.make_generator(exp.policy, (8, 8, 1), bs)
  imgs = image_export.to_uint8(generation.sample_many(gen, params, 0, 32, bs))
  m = clf.evaluate(imgs, "test")
  assert np.isfinite(m["fd"]) and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
  np.testing.assert_allclose(np.sum(m["class_hist"]), 1.0)
