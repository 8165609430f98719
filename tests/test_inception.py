"""FID Inception port vs the official pytorch-fid model (golden A5) and the weights converter."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from dxmi_jax.errors import CheckpointError
from dxmi_jax.metrics import features as features_lib
from dxmi_jax.models import inception
from conftest import golden_path  # pylint: disable=wrong-import-order

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def state_dict():
  """The golden A5 recipe weights (numpy only), torch layout."""
  return inception.recipe_state_dict(golden_path("inception_fid_keys.txt"))


@pytest.fixture(scope="module")
def variables(state_dict):
  return inception.load_variables(state_dict)


@pytest.fixture(scope="module")
def io():
  with np.load(golden_path("inception_fid_io.npz")) as z:
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def forward(variables, io):
  """One compile: the model on the golden float input, with the debug block means."""
  x = jnp.asarray(io["x"].transpose(0, 2, 3, 1))
  with jax.default_matmul_precision("highest"):
    out = jax.jit(lambda v, x: inception.InceptionV3().apply(v, x, with_block_means=True))(variables, x)
  return jax.tree.map(np.asarray, out)


def test_recipe_reproduces_key_list(state_dict):
  lines = [
    l.split("\t") for l in golden_path("inception_fid_keys.txt").read_text().splitlines() if l and not l.startswith("#")
  ]
  assert list(state_dict) == [l[1] for l in lines]
  for _idx, key, shape, dtype, _ in lines:
    assert state_dict[key].dtype == np.dtype(dtype), key
    assert str(tuple(state_dict[key].shape)).replace(",)", ")") == shape.replace(",)", ")"), key


def test_variable_count_matches_weights_file(variables, state_dict):
  n_file = sum(v.size for k, v in state_dict.items() if not k.endswith("num_batches_tracked"))
  n_flax = sum(np.size(x) for x in jax.tree.leaves(variables))
  assert n_flax == n_file
  assert set(variables) == {"params", "batch_stats"}


def test_resize_matches_torch_interpolate(io):
  x = jnp.asarray(io["x"].transpose(0, 2, 3, 1))
  got = np.asarray(jax.jit(inception.resize_bilinear_299)(x)).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(got, io["x_resized299"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("hw", [(17, 40), (320, 411)])
def test_resize_matches_torch_for_up_and_downsampling(hw):
  torch = pytest.importorskip("torch", reason="compares with torch F.interpolate")
  x = np.random.default_rng(0).uniform(size=(1, 3) + hw).astype(np.float32)
  want = torch.nn.functional.interpolate(
    torch.from_numpy(x), size=(299, 299), mode="bilinear", align_corners=False
  ).numpy()
  got = np.asarray(inception.resize_bilinear_299(jnp.asarray(x.transpose(0, 2, 3, 1))))
  np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-6)


def test_pool3_matches_golden(forward, io):
  np.testing.assert_allclose(forward["pool3"], io["pool3"], **TOL)
  # The float64 reference bounds the float32 rounding of both implementations.
  np.testing.assert_allclose(forward["pool3"], io["pool3_float64"], **TOL)


@pytest.mark.parametrize("block", ["block0_mean", "block1_mean", "block2_mean"])
def test_block_means_match_golden(forward, io, block):
  np.testing.assert_allclose(forward[block], io[block], **TOL)


def test_logits_are_fc_of_pool3(forward, state_dict):
  w = state_dict["fc.weight"].astype(np.float64)
  b = state_dict["fc.bias"].astype(np.float64)
  p = forward["pool3"].astype(np.float64)
  np.testing.assert_allclose(forward["logits_unbiased"], p @ w.T, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(forward["logits"], p @ w.T + b, rtol=1e-4, atol=1e-4)


def test_extractor_uint8_path_matches_golden(variables, io):
  """The production path (uint8 / 255 on device, sharded jit) gives the golden pool3."""
  u8 = np.round(io["x"] * 255).astype(np.uint8).transpose(0, 2, 3, 1)
  ext = features_lib.InceptionFeatureExtractor(variables, batch_size=2)
  feats = ext.features(u8)
  np.testing.assert_allclose(feats["pool3"], io["pool3"], **TOL)
  assert feats["logits_unbiased"].shape == (2, 1008)


# ---------------------------------------------------------------- converter


def test_wrapper_layout_converts_identically(state_dict, variables):
  rename = {v: k for k, v in inception._WRAPPER_PREFIXES.items()}  # pylint: disable=protected-access
  wrapped = {}
  for k, v in state_dict.items():
    head = k.split(".")[0]
    wrapped[(rename[head] + k[len(head) :]) if head in rename else k] = v
  assert any(k.startswith("blocks.2.0.") for k in wrapped)
  conv = inception.load_variables(wrapped)
  for a, b in zip(jax.tree.leaves(conv), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_conv_and_fc_transposes(state_dict, variables):
  w = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # (O, I, 1, 7)
  k = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  np.testing.assert_array_equal(k, w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
  np.testing.assert_array_equal(
    variables["batch_stats"]["Conv2d_1a_3x3"]["bn"]["var"], state_dict["Conv2d_1a_3x3.bn.running_var"]
  )


@pytest.mark.parametrize(
  "corrupt, match",
  [
    (lambda sd: sd.pop("Mixed_7c.branch_pool.conv.weight"), "missing"),
    (lambda sd: sd.__setitem__("Mixed_5b.extra.conv.weight", np.zeros((1, 1, 1, 1), np.float32)), "unexpected"),
    (lambda sd: sd.__setitem__("AuxLogits.fc.weight", np.zeros((1, 1), np.float32)), "unexpected"),
    (lambda sd: sd.__setitem__("fc.weight", np.zeros((1000, 2048), np.float32)), "does not fit"),
    (lambda sd: sd.__setitem__("Mixed_5b.branch1x1.bn.running_var", np.full((64,), np.nan, np.float32)), "NaN"),
  ],
)
def test_converter_rejects_bad_state_dicts(state_dict, corrupt, match):
  sd = dict(state_dict)
  corrupt(sd)
  with pytest.raises(CheckpointError, match=match):
    inception.load_variables(sd)


def test_missing_weights_message_says_where_to_get_them(monkeypatch, tmp_path):
  monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
  missing = tmp_path / "nope.pth"
  for kwargs in ({"source": str(missing)}, {"config": {"eval": {"inception_weights": str(missing)}}}):
    with pytest.raises(CheckpointError) as e:
      inception.load_variables(**kwargs)
    msg = str(e.value)
    assert inception.FID_WEIGHTS_URL in msg
    assert "DXMI_INCEPTION_WEIGHTS" in msg and "config.eval.inception_weights" in msg
    assert str(missing) in msg
  assert issubclass(CheckpointError, ValueError)


def test_weights_path_resolution_order(monkeypatch, tmp_path):
  a, b, c = (tmp_path / n for n in ("a.npz", "b.npz", "c.npz"))
  for p in (a, b, c):
    p.write_bytes(b"")

  class Cfg:  # attribute-style config (ml_collections-like)
    class eval:  # noqa: N801
      inception_weights = str(b)

  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(c))
  assert inception.resolve_weights_path(str(a), Cfg) == str(a)
  assert inception.resolve_weights_path(None, Cfg) == str(b)
  assert inception.resolve_weights_path(None, {"eval": {}}) == str(c)
  monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "missing.pth"))
  with pytest.raises(CheckpointError, match="DXMI_INCEPTION_WEIGHTS"):
    inception.resolve_weights_path()


def test_torch_checkpoint_file_loads(state_dict, variables, tmp_path):
  torch = pytest.importorskip("torch", reason="reading .pth needs torch")
  path = tmp_path / inception.FID_WEIGHTS_FILENAME
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, path)
  conv = inception.load_variables(str(path))
  for a, b in zip(jax.tree.leaves(conv), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
