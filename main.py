"""dxmi-jax entry point: ``python main.py --config=configs/gaussians2d.py --workdir=DIR [--mode=train]``."""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dxmi_jax import experiment, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/gaussians2d.py", "Experiment config (file.py or file.py:variant).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", list(train.MODES), "What to do.")


class _QuietLibraries:
  """Drops INFO records of Orbax/absl-internal chatter; warnings still show."""

  def filter(self, record):
    return record.levelno >= 30 or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    train.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except (experiment.ConfigError, train.TrainingError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
