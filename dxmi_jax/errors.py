"""The error types user input can raise; at the bottom of the package (imports nothing of ours)."""


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
