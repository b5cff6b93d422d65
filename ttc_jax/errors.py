"""The one exception type for bad input: the launcher prints it as one line and exits 2.

Raise `UserError` for anything the user can fix (a config value, a missing or damaged input file,
a stage run before its inputs); every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """Bad input: a one-line message naming the bad value or file and what to do."""

  def __init__(self, message: str):
    super().__init__(' '.join(str(message).split()))


class MissingInputError(UserError, FileNotFoundError):
  """A stage's input does not exist (yet): the message names the stage that makes it."""


class CorruptArtifactError(UserError):
  """A workdir artifact could not be read: the message names the file and the stage to rerun."""


class StaleArtifactError(UserError):
  """A workdir artifact was made under other config values than the current ones."""


class ConfigError(UserError, ValueError):
  """A config value is out of range or inconsistent with another one."""


class BadInputError(UserError, ValueError):
  """An input file (a checkpoint to import, a dataset's JSONL) is not what the stage expects."""
