"""Anomaly detection with DxMI-trained EBMs: a project on top of the core (``config.project``).

Importing it registers, into the core's registries:
  networks    ``ae_energy`` (the autoencoder energy) and ``energy_mlp`` (networks.py)
  data        ``npz`` (an (N, D) table, ``X``) and ``uniad`` (every location of a UniAD-style
              feature file as one vector), both through ``provider.AnomalyData``
  evaluator   ``anomaly``: training-only diagnostics on held-out normals (evaluator.py)
  stages      the autoencoder's reconstruction pretraining before DxMI (pretrain_ae.py), then
              the policy's initial sigmas and the energy's scale relative to the data's spread
              (provider.relative_scales)
  trainer     ``mcmc``: the Langevin EBM baseline on the same energy (mcmc.py)
  mode        ``--mode=score``: energies of new rows, or image scores and pixel maps of new
              feature maps (score.py)

The modules: data (inputs, transforms, diffusion of chain starts), provider, networks,
pretrain_ae, evaluator, score, fit (in-process detectors for the benchmark, seeds vmapped),
mcmc (the Langevin-MCMC EBM baseline), classical (scikit-learn baselines), metrics (AUROC,
AUPRC, splits), synthetic (test data), extract (backbone feature maps in the UniAD layout).
The convolutional feature-map networks of an earlier version are gone: they were never shown
to beat the per-location model, and an untrained one already scored 0.93 on the test maps.
"""

from dxmi_jax import data as _data
from dxmi_jax import evaluators as _evaluators
from dxmi_jax import modes as _modes
from dxmi_jax import projects as _projects
from dxmi_jax.errors import ConfigError as _ConfigError
from dxmi_jax.proj.anomaly import data as _anomaly_data
from dxmi_jax.proj.anomaly import mcmc as _mcmc
from dxmi_jax.proj.anomaly import networks as _networks  # noqa: F401  (registers the networks)
from dxmi_jax.proj.anomaly import pretrain_ae as _pretrain_ae
from dxmi_jax.proj.anomaly.evaluator import AnomalyEvaluator as _AnomalyEvaluator
from dxmi_jax.proj.anomaly.provider import STARTS as _STARTS
from dxmi_jax.proj.anomaly.provider import AnomalyData as _AnomalyData
from dxmi_jax.proj.anomaly.provider import relative_scales as _relative_scales

NAME = "anomaly"


def _validate(config, mode):
  d = config.data
  if d.normalize not in _anomaly_data.NORMALIZATIONS:
    raise _ConfigError(f"config.data.normalize: expected one of {_anomaly_data.NORMALIZATIONS}, got {d.normalize!r}")
  if d.start not in _STARTS:
    raise _ConfigError(f"config.data.start: expected one of {_STARTS}, got {d.start!r}")
  if not 0.0 <= d.val_fraction < 1.0:
    raise _ConfigError(f"config.data.val_fraction must be in [0, 1), got {d.val_fraction}")
  if d.start_noise < 0 or d.start_steps < 1:
    raise _ConfigError(
      f"config.data.start_noise must be >= 0 and config.data.start_steps >= 1, got {d.start_noise}, {d.start_steps}"
    )
  if (d.normalize == "sphere") != (config.policy.get("manifold", "euclidean") == "sphere"):
    raise _ConfigError(
      f"config.policy.manifold={config.policy.get('manifold', 'euclidean')!r} with config.data.normalize="
      f"{d.normalize!r}: unit-sphere inputs need a policy on the sphere (manifold='sphere') and only they"
    )
  if mode == "score":  # score reads D and the transform from the checkpoint
    return
  try:
    _anomaly_data.vector_data(config)
  except ValueError as e:
    raise _ConfigError(str(e)) from None


def _score(config, workdir):
  from dxmi_jax.proj.anomaly import score  # pylint: disable=import-outside-toplevel

  return score.run(config, workdir)


for _name in (_anomaly_data.NPZ, _anomaly_data.UNIAD):
  _data.register(_name, _AnomalyData, _validate)
_evaluators.register("anomaly", _AnomalyEvaluator)
_projects.register_stage(NAME, _pretrain_ae.stage)
_projects.register_stage(NAME, _relative_scales)
_modes.register("score", NAME, _score)
_projects.register_trainer("mcmc", _mcmc.make_train_step)
