"""Scores encoders on a list of tasks, the way papers score a pretraining
run: each start fine-tuned on each task with several seeds under one
protocol, the median over seeds per task and the average over tasks:

  python -m lmjax.suite --config=configs/suite.py --workdir=DIR \\
      --config.tasks=rt_polarity,tsv:reviews.tsv --config.starts=pretrain:runs/pretrain,random

DIR/results.md, results.json and results.png hold the tables and the plot.
Running it again continues where it stopped: finished runs are read,
unfinished ones resume.
"""

from lmjax import cli


def run(config, workdir: str) -> dict:
  from lmjax.runs import suite  # pylint: disable=import-outside-toplevel
  return suite.run(config, workdir)


def report(results: dict, seconds: float) -> str:
  """A line per start: its average over tasks and each task's median."""
  if results.get("stopped_by"):
    return (f"{results['stopped_in']} stopped ({results['stopped_by']}); run the same "
            "command again to continue")
  lines = []
  for start, average in results["average"].items():
    each = ", ".join(f"{r['task']} {r['starts'][start]['median']:.4f}"
                     for r in results["tasks"])
    lines.append(f"{start:>20}: average {average:.4f} ({each})")
  return "\n".join(lines) + f"\n{len(results['tasks'])} tasks, {results['seeds']} seeds; " \
      f"{seconds:.0f}s"


if __name__ == "__main__":
  cli.run_in_workdir(run, report, "configs/suite.py")
