"""Per-location feature maps end to end: pretrain the autoencoder, DxMI, score maps.

Synthetic UniAD-style files (``feature_align`` (N, C, H, W), ``label``, ``mask``, ``clsname``):
normal maps are smooth random fields mixed into C channels; an anomalous map carries one 2x2
patch of an off-distribution pattern, with its pixel mask.  ``configs/anomaly.py:features``
trains on every location of the normal maps as one unit-sphere vector and
``--mode=score`` writes image scores (max of each energy map) and upsampled pixel maps.  The
trained model must beat the untrained one (random autoencoder weights) by a margin on both
detection and localisation.  Also: the feature-file loader's layouts and errors.
"""

import json
import pickle

import jax
import numpy as np
import pytest

from configs import anomaly as anomaly_config
from dxmi_jax import checkpoint as ckpt_lib
from dxmi_jax import experiment, modes
from dxmi_jax.proj.anomaly import data as anomaly_data
from dxmi_jax.proj.anomaly import metrics, synthetic
from dxmi_jax.proj.anomaly import score as score_lib

HW, C, MASK = 6, 8, 24


def _write(path, feats, label, mask, names):
  np.savez(path, feature_align=feats.transpose(0, 3, 1, 2), label=label, mask=mask, clsname=names)


def _config(**score):
  c = anomaly_config.get_config("features,smoke")
  c.energy.hidden = (32,)
  c.energy.latent = 4
  c.training.num_iters = 150
  c.training.batch_size = 72  # 2 maps x 36 locations
  c.pretrain_energy.num_iters = 150
  c.pretrain_energy.batch_size = 72
  c.training.checkpoint_every = 150
  c.training.log_every = 50
  for k, v in score.items():
    c.score[k] = v
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("features")
  train, _, _ = synthetic.feature_maps(96, 0, hw=HW, channels=C, mask_size=MASK, seed=0)
  test, label, mask = synthetic.feature_maps(40, 40, hw=HW, channels=C, mask_size=MASK, seed=1)
  _write(root / "train.npz", train, np.zeros(96, int), np.zeros((96, MASK, MASK), np.uint8), np.array(["a"] * 96))
  _write(root / "test.npz", test, label, mask, np.array(["a"] * 80))
  c = _config()
  c.data.path = str(root / "train.npz")
  modes.run(c, str(root / "w"), "train")
  return root, test, label, mask


def test_pretrain_dxmi_score_beats_untrained(trained):
  root, test, label, mask = trained
  out = root / "scores.npz"
  modes.run(_config(input=str(root / "test.npz"), output=str(out)), str(root / "w"), "score")
  z = np.load(out)
  assert z["image_score"].shape == (80,) and z["pixel_map"].shape == (80, MASK, MASK)
  np.testing.assert_array_equal(z["label"], label)
  trained_image = metrics.auroc(label, z["image_score"])
  trained_pixel = metrics.auroc(mask.reshape(-1), z["pixel_map"].reshape(-1))
  # the same network with its initial (random) weights, scored the same way
  c = _config()
  c.data.path = str(root / "train.npz")
  exp = experiment.build(c)
  state = exp.init_state(jax.random.PRNGKey(0))
  maps = anomaly_data.load_feature_maps(str(root / "test.npz"))
  image0, pixel0 = score_lib.map_scores(exp.energy_fn(state), exp.data.transform, maps)
  untrained_image, untrained_pixel = metrics.auroc(label, image0), metrics.auroc(mask.reshape(-1), pixel0.reshape(-1))
  assert trained_image > 0.9 and trained_image > untrained_image + 0.1, (trained_image, untrained_image)
  assert trained_pixel > 0.9 and trained_pixel > untrained_pixel + 0.1, (trained_pixel, untrained_pixel)
  # the per-category report (one category here): the same AUROCs
  report = json.loads(str(z["auroc"]))
  np.testing.assert_allclose(report["a"]["image_auroc"], trained_image, rtol=1e-9)
  np.testing.assert_allclose(report["mean"]["pixel_auroc"], trained_pixel, rtol=1e-9)
  # every location was scored as one unit-sphere vector
  meta = ckpt_lib.read_meta(str(root / "w"))
  assert meta["data_transform"] == {"kind": "sphere", "dim": C}


def test_pretraining_and_diagnostics_recorded(trained):
  root = trained[0]
  meta = json.loads((root / "w" / "pretrain_energy" / "meta.json").read_text())
  assert meta["recon_error_last"] < 0.5 * meta["recon_error_first"], meta
  records = [json.loads(l) for l in (root / "w" / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in records if "nn_neg_to_val" in r][-1]
  for key in ("nn_neg_to_val", "nn_val_to_fit", "nn_start_to_val", "energy_val", "energy_neg"):
    assert np.isfinite(final[key]), (key, final)
  assert final["energy_neg"] > final["energy_val"]


def test_feature_file_loader_layouts(tmp_path):
  feats, label, mask = synthetic.feature_maps(3, 2, hw=4, channels=6, mask_size=16, seed=0)
  names = np.array(["bottle"] * 5)
  # the authors' layout: feature_align (N, C, H, W)
  np.savez(tmp_path / "a.npz", feature_align=feats.transpose(0, 3, 1, 2), label=label, mask=mask, clsname=names)
  got = anomaly_data.load_feature_maps(str(tmp_path / "a.npz"))
  np.testing.assert_array_equal(got.features, feats)
  np.testing.assert_array_equal(got.mask, mask)
  assert list(got.clsname) == list(names)
  # one 4-D features array, channels last
  np.savez(tmp_path / "f.npz", features=feats, label=label, mask=mask, clsname=names)
  np.testing.assert_array_equal(anomaly_data.load_feature_maps(str(tmp_path / "f.npz")).features, feats)
  # a pickle, channel-first features and (N, 1, h, w) masks
  with open(tmp_path / "f.pkl", "wb") as f:
    pickle.dump(
      {"features": feats.transpose(0, 3, 1, 2).copy(), "label": label, "mask": mask[:, None] * 1.0, "clsname": names},
      f,
    )
  got = anomaly_data.load_feature_maps(str(tmp_path / "f.pkl"), channels_last=False)
  np.testing.assert_array_equal(got.features, feats)
  np.testing.assert_array_equal(got.mask, mask)
  np.testing.assert_array_equal(got.label, label)
  np.savez(tmp_path / "bad.npz", features=feats)
  with pytest.raises(ValueError, match="missing"):
    anomaly_data.load_feature_maps(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "flat.npz", feature_align=feats[..., 0], label=label)
  with pytest.raises(ValueError, match="4-D"):
    anomaly_data.load_feature_maps(str(tmp_path / "flat.npz"))


def test_training_rows_are_every_normal_location_of_the_chosen_classes(tmp_path):
  feats, label, _ = synthetic.feature_maps(4, 2, hw=3, channels=5, seed=0)
  names = np.array(["a", "b", "a", "b", "a", "b"])
  np.savez(tmp_path / "t.npz", feature_align=feats.transpose(0, 3, 1, 2), label=label, clsname=names)
  c = anomaly_config.get_config("features")
  c.data.path = str(tmp_path / "t.npz")
  rows = anomaly_data.training_rows(c)  # unified: every class, normals only (maps 0..3)
  np.testing.assert_array_equal(rows, feats[:4].reshape(-1, 5))
  c.data.classes = "b"
  np.testing.assert_array_equal(anomaly_data.training_rows(c), feats[[1, 3]].reshape(-1, 5))
  c.data.classes = "zebra"
  with pytest.raises(ValueError, match="config.data.classes"):
    anomaly_data.training_rows(c)
