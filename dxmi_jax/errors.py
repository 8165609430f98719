"""The error types user input can raise, the numeric range check the config sections share, and the
report of a checkpoint that does not fit a model; at the bottom of the package (imports nothing of ours)."""

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


def _fmt_shape(shape) -> str:
  return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def mismatch_report(what: str, missing, unexpected, misshaped, n: int = 5, side: str = "checkpoint") -> str:
  """The message of a checkpoint that does not fit a model: ``what``, then the first ``n`` missing,
  unexpected and mis-shaped keys (the last with both shapes)."""
  parts = [what]
  if missing:
    parts.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:n]) + (" ..." if len(missing) > n else ""))
  if unexpected:
    parts.append(
      f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:n]) + (" ..." if len(unexpected) > n else "")
    )
  if misshaped:
    parts.append(
      f"{len(misshaped)} mis-shaped key(s): "
      + ", ".join(f"{k} {side} {_fmt_shape(a)} vs model {_fmt_shape(b)}" for k, a, b in misshaped[:n])
      + (" ..." if len(misshaped) > n else "")
    )
  return "\n  ".join(parts)
