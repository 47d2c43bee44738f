"""What every lmjax entry point shares: flag parsing and the user-error exit.

A mistake the user can fix (bad flag, unknown config key, missing file) ends
with one line on stderr naming the cause and exit status 2, no traceback.
"""

import keyword
import sys
from collections.abc import Callable

from absl import app, flags, logging

from lmjax.errors import UserError


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _quote_keywords(arg: str) -> str:
  """`--config.init.from=X` -> `--config.init["from"]=X`: config_flags parses
  override paths as Python, where a keyword is only valid as a subscript."""
  name, eq, value = arg.partition("=")
  if not name.startswith("--config."):
    return arg
  parts = name[len("--config."):].split(".")
  if not any(keyword.iskeyword(p) for p in parts[1:]):
    return arg
  path = parts[0] + "".join(f'["{p}"]' if keyword.iskeyword(p) else f".{p}"
                            for p in parts[1:])
  return f"--config.{path}{eq}{value}"


def _parse_flags(argv: list[str]) -> list[str]:
  argv = [argv[0], *map(_quote_keywords, argv[1:])]
  if sys.argv[1:]:  # config_flags reads its overrides from sys.argv itself
    sys.argv[:] = [sys.argv[0], *map(_quote_keywords, sys.argv[1:])]
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
