"""dxmi-jax entry point: ``python main.py --config=configs/gaussians2d.py --workdir=DIR [--mode=train]``.

Thin on purpose: flags -> ``dxmi_jax.modes.run``.  Bad input (an unknown or
mistyped option, a bad config value, a missing file) prints one line
``error: ...`` naming the option on stderr and exits with status 2, before
anything is written.  A run stopped by SIGTERM saves its state first, prints one
line and exits with status 143 (``preemption.EXIT_STATUS``; docs/faults.md).
"""

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dxmi_jax import errors, modes, preemption

FLAGS = flags.FLAGS


def _one_line(message) -> str:
  """Collapses a message (which may embed a traceback) into one line ending with its gist."""
  text = str(message)
  if "Traceback (most recent call last)" in text:
    head = text.split("Traceback (most recent call last)")[0]
    last = [l for l in text.splitlines() if l.strip()][-1]
    text = f"{head} {last}"
  return " ".join(text.split())


def _fail(message):
  print("error: " + _one_line(message), file=sys.stderr, flush=True)
  sys.exit(2)


def _offending_override(argv, error) -> str:
  """The ``--config.a.b`` argument an unknown-key error came from (best effort)."""
  text = str(error)
  hint = re.search(r'instead of "([^"]+)"', text)  # ml_collections' did-you-mean names the bad key
  names = [hint.group(1)] if hint else re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)[:1]
  overrides = [m.group(1) for m in (re.match(r"--(config\.[^=\s]+)", a) for a in argv[1:]) if m]
  for path in overrides:
    if names and names[0] in path.split(".")[1:]:
      return "--" + path
  return "--config.*"


def _flag_error(argv, e):
  if isinstance(e, flags.Error):
    _fail(f"{_one_line(e)} (see --helpfull)")
  if isinstance(e, (KeyError, AttributeError)):  # a key the locked config does not have
    hint = re.search(r'Did you mean "([^"]+)"', str(e))
    _fail(
      f"{_offending_override(argv, e)}: no such config option"
      + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
      + "; the config is locked: only its existing fields can be set"
    )
  _fail(f"{_offending_override(argv, e)}: {e}")


def define_flags(argv):
  """Defines --config/--workdir/--mode.  ml_collections already applies the
  ``--config.*`` overrides of ``argv`` to the default config here."""
  try:
    config_flags.DEFINE_config_file(
      "config", "configs/gaussians2d.py", "Experiment config (file.py or file.py:variant).", lock_config=True
    )
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    _flag_error(argv, e)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
  flags.DEFINE_enum("mode", "train", list(modes.MODES), "What to do.")
  flags.mark_flag_as_required("workdir")


def parse_flags(argv):
  """absl's parser with one-line errors (absl/ml_collections print tracebacks for some)."""
  try:
    return FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    _flag_error(argv, e)


def _config():
  """FLAGS.config, loaded lazily by ml_collections: a missing file surfaces here."""
  try:
    config = FLAGS.config
    config.keys()  # a config that failed to load raises on first use
    return config
  except Exception as e:  # pylint: disable=broad-except  (IOError, errors inside get_config)
    last = [l for l in str(e).splitlines() if l.strip()]
    _fail(f"--config: cannot load the config file: {last[-1].strip() if last else e}")


class _QuietLibraries:
  """Drops Orbax's INFO chatter (and its warning on every read-only open); other warnings show, and
  its errors as one line each (a failed save is reported by our own ``error:`` line, which says why)."""

  def filter(self, record):
    if "orbax" not in record.pathname:
      return True
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return record.levelno >= 30 and not record.getMessage().startswith("Given directory is read only")


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    modes.run(_config(), FLAGS.workdir, FLAGS.mode)
  except (errors.ConfigError, errors.TrainingError) as e:
    _fail(e)
  except preemption.Preempted as e:  # SIGTERM: the state is saved; the same command resumes it
    print(_one_line(e), file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_STATUS)


if __name__ == "__main__":
  define_flags(sys.argv)
  app.run(main, flags_parser=parse_flags)
