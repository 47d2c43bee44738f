"""The error types entry points report in one line.

`UserError` is a mistake the user can fix: exit status 2. `Fault` is a
failure outside the program (a full disk, a file that cannot be written):
exit status 1. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A mistake in the user's input: a bad path, config value or checkpoint."""


class Fault(Exception):
  """A failure outside the program; the message says what was saved."""


class MissingSplitError(UserError):
  """A source or task has no data for the split asked for."""


class ConfigError(UserError, ValueError):
  """An invalid configuration value; the message names the field."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that is missing, incomplete or does not fit the model."""


def first_line(e: BaseException, limit: int = 200) -> str:
  """The first non-blank line of an exception's message (its type's name
  when it has none), cut to `limit` characters: how another library's error
  is quoted inside one of lmjax's one-line messages."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return (lines or [type(e).__name__])[0][:limit]


def check_fields(section: str, values, checks) -> None:
  """Raises ConfigError for the first (field, ok, requirement) whose `ok` is
  false, naming `section.field`, what it must be and the value it has."""
  for field, ok, requirement in checks:
    if not ok:
      raise ConfigError(f"{section}.{field} must be {requirement}, got "
                        f"{values[field]!r}")
