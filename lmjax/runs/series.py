"""Runs of runs (the task suite, the transfer experiment): each run an
ordinary workdir, read when it finished with the same config, resumed when
it did not, so that a stopped series continues where it was."""

import io
import json
from collections.abc import Callable

from lmjax import paths
from lmjax.errors import UserError


class Stopped(Exception):
  """A run stopped before its end (SIGTERM): the series stops there. Its
  argument is {stopped_by, stopped_in}."""


def finished(workdir: paths.PathLike, config) -> dict | None:
  """The summary of a finished run in `workdir` made with `config`; None
  when it has not finished; UserError when it was made with another config.
  A pretraining run within a budget is compared with the steps it
  recorded (lmjax.trainer.budget)."""
  workdir = paths.resolve(workdir)
  if not (workdir / "summary.json").exists():
    return None
  try:
    summary = json.loads((workdir / "summary.json").read_text())
    saved = json.loads((workdir / "config.json").read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"{workdir}: its summary.json or config.json cannot be read "
                    f"({type(e).__name__}); move the run aside to run it again") from None
  if summary.get("stopped_by"):
    return None
  wanted = json.loads(config.to_json())
  if wanted.get("train", {}).get("budget_minutes") is not None:
    wanted["train"]["steps"] = saved.get("train", {}).get("steps")
  if saved != wanted:
    raise UserError(f"{workdir} holds a run made with another config; use a new "
                    "--workdir, or the config it was made with")
  return summary


def run_once(fn: Callable[[object, str], dict], config, workdir: str, label: str,
             echo: Callable[[str], None]) -> dict:
  """`fn(config, workdir)`'s summary, or the finished run's; raises
  Stopped when the run was stopped."""
  summary = finished(workdir, config)
  if summary is not None:
    echo(f"{label}: finished earlier, read from {workdir}")
    return summary
  echo(f"{label}: running in {workdir}")
  summary = fn(config, workdir)
  if summary.get("stopped_by"):
    raise Stopped(dict(stopped_by=summary["stopped_by"], stopped_in=label))
  return summary


def png(figure) -> bytes:
  """A matplotlib figure laid out, as PNG bytes; the figure is closed."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=110)
  plt.close(figure)
  return buffer.getvalue()


def write_results(workdir: paths.PathLike, results: dict, table: str, plot: bytes) -> None:
  """DIR/results.json, results.md and results.png of a series."""
  directory = paths.resolve(workdir)
  paths.write_whole(directory / "results.json", json.dumps(results, indent=2) + "\n")
  paths.write_whole(directory / "results.md", table)
  paths.write_whole(directory / "results.png", plot)
