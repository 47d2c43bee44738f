"""What research scripts (examples/) share: arguments whose mistakes end in
one line and exit status 2, the arguments most of them take, and figures
drawn without a display."""

import argparse
import os
import sys
from collections.abc import Callable

from lmjax import cli
from lmjax.errors import Fault, UserError


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose mistakes are UserErrors, not a usage text and status 2
  of its own: under `run` they end in one line."""

  def error(self, message):
    raise UserError(f"{self.prog}: {message}")


def parser(doc: str, *, workdir: bool = False, task: bool = False,
           output: str = "") -> ArgumentParser:
  """A parser for the script whose docstring is `doc`, with its usual
  arguments: `--workdir` (a trained workdir), `--task` and `--text_fields`
  (a labelled task), `--output` (a directory; `output` says what goes in it)."""
  name = os.path.splitext(os.path.basename(sys.argv[0]))[0] or "script"
  made = ArgumentParser(prog=name, description=doc.split("\n")[0])
  if workdir:
    made.add_argument("--workdir", required=True, help="a pretraining or fine-tuning workdir")
  if task:
    made.add_argument("--task", default="rt_polarity",
                      help="rt_polarity, glue/NAME, tsv:PATH, csv:PATH or jsonl:PATH")
    made.add_argument("--text_fields", default="", help="a local file's COLUMN[,PAIR_COLUMN]")
  if output:
    made.add_argument("--output", required=True, help=f"the directory for {output}")
  return made


def parse(made: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
  """`made.parse_args(argv)`; a UserError when --output names a file."""
  args = made.parse_args(argv)
  if getattr(args, "output", None) and os.path.isfile(args.output):
    raise UserError(f"--output={args.output} is a file, not a directory")
  return args


def pyplot():
  """matplotlib's pyplot, drawing to files (the Agg backend): no display needed."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save_figure(fig, directory: str, name: str) -> str:
  """Lays `fig` out, writes it to DIRECTORY/NAME (made if need be) and
  closes it; returns the path."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, name)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  pyplot().close(fig)
  return path


def run(main: Callable[[list[str]], object]) -> None:
  """Runs a script's `main(sys.argv[1:])`: a UserError ends it with one
  line and exit status 2; a Fault or an OSError (an output that cannot be
  written, a full disk) with one line and status 1."""
  cli.quiet_libraries()
  try:
    main(sys.argv[1:])
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except (Fault, OSError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr, flush=True)
    sys.exit(130)
