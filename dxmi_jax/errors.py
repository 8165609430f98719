"""The error types user input can raise, and the numeric range check the config sections share;
at the bottom of the package (imports nothing of ours)."""

import math


class ConfigError(ValueError):
  """A bad option or input file: the message names it and says what was expected.

  main.py prints it as one ``error:`` line and exits with status 2; it is raised
  before anything is compiled or written.
  """


class CheckpointError(ValueError):
  """A checkpoint file is missing, unreadable, or does not fit an architecture."""


class TrainingError(RuntimeError):
  """The run cannot go on (e.g. repeated non-finite losses); the message says why.

  main.py prints it as one ``error:`` line and exits with status 2, like a ConfigError.
  """


def check_ranges(config, ranges) -> None:
  """Each ``(section.key, lower bound, lower included, upper bound or None, upper included)`` of
  ``ranges`` that ``config`` has is a finite number in range; ConfigError naming the first that is not."""
  for key, lo, lo_incl, hi, hi_incl in ranges:
    section, name = key.split(".")
    if section not in config or name not in config[section]:
      continue
    lo_s = "" if lo is None else f"{'>=' if lo_incl else '>'} {lo:g}"
    hi_s = "" if hi is None else f"{'<=' if hi_incl else '<'} {hi:g}"
    what = " and ".join(filter(None, (lo_s, hi_s)))
    value = config[section][name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise ConfigError(f"config.{key} must be a finite number, got {value!r}")
    if lo is not None and (value < lo or (value == lo and not lo_incl)):
      raise ConfigError(f"config.{key} must be {what}, got {value!r}")
    if hi is not None and (value > hi or (value == hi and not hi_incl)):
      raise ConfigError(f"config.{key} must be {what}, got {value!r}")
