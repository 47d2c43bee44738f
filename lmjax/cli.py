"""What every lmjax entry point shares: flag parsing and the user-error exit.

A mistake the user can fix (bad flag, unknown config key, missing file) ends
with one line on stderr naming the cause and exit status 2, no traceback.
"""

import sys
from collections.abc import Callable

from absl import app, flags, logging

from lmjax.errors import UserError


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  except (KeyError, AttributeError, ValueError, TypeError) as e:
    _fail(f"bad config or flag: {str(e).splitlines()[0]}")  # config_flags' errors
  raise AssertionError("unreachable")


def run(main: Callable[[list[str]], None]) -> None:
  """Runs `main` under absl with lmjax's handling of user errors."""

  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:  # keep library INFO logs quiet
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except UserError as e:
      _fail(str(e))

  app.run(guarded, flags_parser=_parse_flags)
