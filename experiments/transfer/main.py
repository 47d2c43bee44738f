"""Does pretraining pay off? One command runs the experiment:

  python -m experiments.transfer.main --config=experiments/transfer/config.py --workdir=DIR

(from the checkout's root)

Each pretraining variant (config.variants) pretrains on config.corpus (by
default the task's own training text), is fine-tuned on config.task with
config.seeds seeds, and so is a model of the same size from random weights.
DIR/results.md, results.json and results.png hold the table: each variant's
scores (mean and standard deviation over seeds), its pretraining MLM and
linear-probe accuracy, and the baselines. Running it again continues where
it stopped: finished runs are read, unfinished ones resume.
"""

from lmjax import cli


def run(config, workdir: str) -> dict:
  from experiments.transfer import experiment  # pylint: disable=import-outside-toplevel
  return experiment.run(config, workdir)


def report(results: dict, seconds: float) -> str:
  """A line per variant: its main score next to the baselines'."""
  if results.get("stopped_by"):
    return (f"{results['stopped_in']} stopped ({results['stopped_by']}); run the same "
            "command again to continue")
  key = results["metrics"][0]
  lines = [f"{v['variant']:>12}: {key} {v['mean'][key]:.4f} ± {v['std'][key]:.4f}"
           for v in results["variants"]]
  lines += [f"{name:>12}: {key} {scores[key]:.4f}"
            for name, scores in results["baselines"].items() if key in scores]
  return "\n".join(lines) + f"\n{results['corpus']} -> {results['task']}; {seconds:.0f}s"


if __name__ == "__main__":
  cli.run_in_workdir(run, report, "experiments/transfer/config.py")
