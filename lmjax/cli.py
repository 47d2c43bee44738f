"""What every lmjax entry point shares: flag parsing and the user-error exit.

A mistake the user can fix (bad flag, unknown config key, missing file) ends
with one line on stderr naming the cause and exit status 2, no traceback.
"""

import ast
import contextlib
import importlib.util
import json
import logging as std_logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from lmjax import config_sections
from lmjax.errors import Fault, UserError


_EXAMPLE_CONFIG: list[str] = []  # define_config's example: the fields --help lists


def define_config(example: str) -> Callable[[], object]:
  """Defines --config (an ml_collections config file, whose fields can be
  overridden as --config.section.field=value); returns a getter that raises
  UserError while --config is not given."""
  _EXAMPLE_CONFIG.append(example)
  holder = config_flags.DEFINE_config_file("config", None, f"config file, e.g. {example}",
                                           lock_config=True)

  def config():
    value = holder.value
    if type(value).__name__ == "_ErrorConfig":  # config_flags could not load the file
      raise UserError(f"--config={flags.FLAGS['config'].serialize().split('=', 1)[-1]}: "
                      "no such config file")
    if value is None:
      raise UserError(f"--config is required (e.g. --config={example})")
    return value

  return config


def define_workdir() -> flags.FlagHolder:
  return flags.DEFINE_string("workdir", None, "where checkpoints and metrics go")


def require(*holders: flags.FlagHolder) -> None:
  """UserError naming the first of these flags that was not given, with
  what it is for (absl's own `required` reads as a value check)."""
  for holder in holders:
    if holder.value is None:
      raise UserError(f"--{holder.name} is required: {flags.FLAGS[holder.name].help}")


def run_in_workdir(run_fn: Callable[[object, str], dict],
                   report: Callable[[dict, float], str | None], example: str) -> None:
  """The whole of an entry point that runs a config in a workdir
  (--config, --workdir): starts JAX's distributed runtime when this is one
  process of several, runs `run_fn(config, workdir) -> summary`, prints
  `report(summary, seconds)` and the summary as one JSON line."""
  get_config, workdir = define_config(example), define_workdir()

  def main(argv):
    del argv
    # Outside the training loop (which saves and stops at the step) a SIGTERM
    # finds nothing unsaved: start-up, compilation, the final evaluation.
    signal.signal(signal.SIGTERM, _terminated)
    require(workdir)
    config = get_config()
    from lmjax import distributed, paths  # pylint: disable=import-outside-toplevel
    paths.check_workdir(workdir.value)
    if distributed.requested() and not os.environ.get("LMJAX_SUPERVISED"):
      sys.exit(distributed.supervise([sys.executable, *sys.orig_argv[1:]]))
    distributed.initialize()
    start = time.perf_counter()
    with distributed.lost_peers_in_one_line():
      summary = run_fn(config, workdir.value)
      distributed.leave_together()
    line = report(summary, time.perf_counter() - start)
    if line:
      print(line, flush=True)
    print(json.dumps(summary), flush=True)

  run(main)


class _Terminated(Exception):
  """SIGTERM outside the training loop."""


def _terminated(signum, frame):
  del signum, frame
  raise _Terminated()


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def moved(old: str, new: str) -> None:
  """The whole of a command that moved: one line naming the new one, exit
  status 2."""
  _fail(f"python -m {old} is now {new}")


def _field_comments(file: Path) -> dict[str, str]:
  """{'section.field': the comment beside it} of a config file (a section
  opens at `config.S = ml_collections.ConfigDict` or `def S(`)."""
  comments, section = {}, ""
  for line in file.read_text().splitlines():
    opened = re.match(r"\s*(?:config\.(\w+)\s*=\s*ml_collections\.ConfigDict|def (\w+)\()",
                      line)
    if opened:
      section = (opened.group(1) or opened.group(2)) + "."
    found = re.match(r"\s*(?:config\.)?(\w+)\s*=.*?#\s*(.+)$", line)
    if found and not opened:
      comments.setdefault(section + found.group(1), found.group(2))
  return comments


def _help(argv: list[str]) -> None:
  """What --help prints: the entry point's docstring, its flags, and every
  field of the config (the one --config names, or the example) with its
  default and the comment beside it in the file."""
  print((sys.modules["__main__"].__doc__ or "").strip() + "\n\nflags:")
  for module, module_flags in sorted(flags.FLAGS.flags_by_module_dict().items()):
    if "lmjax" in module:  # lmjax's own (absl names __main__'s by its path)
      for flag in module_flags:
        print(f"  --{flag.name}={flag.default if flag.default is not None else ''}"
              f"  # {flag.help}")
  given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  source = (given or _EXAMPLE_CONFIG or [""])[-1]
  if not source:
    return
  file = _config_file(source.partition(":")[0])
  if not file.is_file():
    _fail(f"--config={source}: no such config file")
  try:
    config = load_config(source)
  except UserError as e:
    _fail(f"--config={e}")
  comments = _field_comments(file)
  shared = {name.rsplit(".", 1)[-1]: comment for name, comment
            in _field_comments(Path(config_sections.__file__)).items()}
  print(f"\nconfig fields of {source} (override as --config.FIELD=VALUE):")
  for name, value in config_sections.leaves(config.to_dict()):
    comment = comments.get(name) or shared.get(name.rsplit(".", 1)[-1])
    print(f"  --config.{name}={value!r}" + (f"  # {comment}" if comment else ""))


def _config_file(path: str) -> Path:
  """A config file as given, or else relative to the checkout's root."""
  return Path(path) if Path(path).is_file() else Path(__file__).parents[1] / path


def load_config(source: str):
  """The config of `configs/NAME.py[:variant]` (a path, or one relative to
  the checkout's root), as --config gives it; UserError when there is none."""
  path, _, variant = source.partition(":")
  file = _config_file(path)
  if not file.is_file():
    raise UserError(f"{source}: no such config file")
  spec = importlib.util.spec_from_file_location(file.stem + "_config", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    return module.get_config(variant or None)
  except ValueError as e:
    raise UserError(f"{source}: {e}") from None


def _parse_flags(argv: list[str], known_only: bool = False) -> list[str]:
  if any(a in ("--help", "-h", "-?", "--helpshort") for a in argv[1:]):
    with contextlib.suppress(BrokenPipeError):
      _help(argv)
    sys.exit(0)
  argv, unset = _unset_fields(argv)
  sys.argv = _unset_fields(sys.argv)[0]  # config_flags reads its overrides there too
  try:
    rest = flags.FLAGS(argv, known_only=known_only)
    _apply_unset(unset)
    return rest
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if "Error whilst parsing config file" in lines[0]:  # the config file raised
      _fail(f"{lines[0].split(': Error whilst')[0].removeprefix('flag ')}: {lines[-1]}")
    _fail(lines[0])
  except (KeyError, AttributeError, ValueError, TypeError) as e:
    text = str(e.args[0]) if e.args else str(e)
    if text.startswith(("'", '"')) and "Did you mean" in text:  # a KeyError's repr
      with contextlib.suppress(ValueError, SyntaxError):
        text = str(ast.literal_eval(text))
    message = text.splitlines() or [type(e).__name__]
    if message[0].startswith("Could not parse '"):  # a path config_flags cannot read
      _fail(f"no config field {message[0].split(chr(39))[1]!r}")
    if isinstance(e, (KeyError, AttributeError)):  # a field the config lacks
      _fail(_unknown_field(argv, message))
    _fail(f"bad config or flag: {message[0]}")  # config_flags' errors
  raise AssertionError("unreachable")


_UNSET = re.compile(r"--config\.([\w.]+)=(?:none|None)")


def _unset_fields(argv: list[str]) -> tuple[list[str], list[str]]:
  """argv without its `--config.FIELD=none` flags, and those FIELDs: a field
  whose default is unset (a placeholder, such as train.budget_minutes) takes
  `none` to unset it again, which config_flags cannot parse as a number."""
  unset = [m.group(1) for a in argv[1:] if (m := _UNSET.fullmatch(a))]
  return [a for a in argv if not _UNSET.fullmatch(a)], unset


def _apply_unset(unset: list[str]) -> None:
  config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  if config is None:  # the run's own check says --config is required
    return
  for path in unset:
    parent, _, name = path.rpartition(".")
    node = config
    try:
      for part in filter(None, parent.split(".")):
        node = node[part]
      value = dict(node.items(preserve_field_references=True))[name]
    except (KeyError, AttributeError, TypeError):
      _fail(f"unknown config field {path!r}")
    if not isinstance(value, config_dict.FieldReference):
      _fail(f"config.{path} cannot be unset (none): give it a value")
    node[name] = None


def _unknown_field(argv: list[str], message: list[str]) -> str:
  """'unknown config field 'train.stepz' (did you mean 'train.steps'?)' from
  config_flags' KeyError ("'stepz'", 'Did you mean "steps" instead of ...')."""
  key = message[0].strip("'\"")
  suggestion = re.search(r'Did you mean "([^"]+)"', " ".join(message[1:]))
  for arg in argv:
    path = arg.removeprefix("--config.").split("=", 1)[0]
    parts = path.split(".")
    if arg.startswith("--config.") and key in parts:
      line = f"unknown config field {path!r}"
      if suggestion:
        parts[parts.index(key)] = suggestion.group(1)
        line += f" (did you mean {'.'.join(parts)!r}?)"
      return line
  return f"unknown config field {key!r}"


def quiet_libraries() -> None:
  """Library INFO logs off; Orbax's notices and tracebacks (a failed save is
  reported in one line) and gcsfs' retries dropped."""
  logging.set_verbosity(logging.WARNING)
  for name in ("gcsfs", "google.auth"):  # retries and fallbacks; a failure is one line
    std_logging.getLogger(name).setLevel(std_logging.CRITICAL)
  not_orbax = lambda record: "/orbax/" not in record.pathname  # noqa: E731
  logging.get_absl_handler().addFilter(not_orbax)
  std_logging.getLogger("absl").addFilter(not_orbax)  # outside absl's app.run too


def run(main: Callable[[list[str]], None], known_only: bool = False) -> None:
  """Runs `main` under absl with lmjax's handling of user errors; with
  `known_only`, flags absl does not know reach `main` in its argv."""

  def guarded(argv):
    if not flags.FLAGS["verbosity"].present:
      quiet_libraries()
    try:
      main(argv)
    except UserError as e:
      _fail(str(e))
    except Fault as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr, flush=True)
      sys.exit(130)
    except _Terminated:
      print("SIGTERM outside the training steps: nothing unsaved; exiting", file=sys.stderr,
            flush=True)
      sys.exit(0)

  app.run(guarded, flags_parser=lambda argv: _parse_flags(argv, known_only))
