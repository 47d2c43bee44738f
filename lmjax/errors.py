"""The one error type for mistakes a user can fix.

Entry points catch `UserError`, print its message on one line and exit with
status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A mistake in the user's input: a bad path, config value or checkpoint."""


class ConfigError(UserError, ValueError):
  """An invalid configuration value; the message names the field."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that is missing, incomplete or does not fit the model."""
