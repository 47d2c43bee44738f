"""Pretrains BERT (MLM + NSP):

  python -m lmjax.pretrain --config=configs/pretrain.py --workdir=DIR

Any config field can be overridden, e.g. --config.train.steps=100. Running
again with the same DIR resumes from its latest checkpoint.
"""

from lmjax import cli
from lmjax.runs.pretraining import train_and_evaluate


def report(summary: dict, seconds: float) -> str | None:
  """The final evaluation next to the baselines, in a line."""
  if "eval_mlm_accuracy" not in summary:
    return None
  return (f"step {summary['step']}: eval MLM accuracy {summary['eval_mlm_accuracy']:.4f} "
          f"(always the most frequent token: {summary['baseline_mlm_accuracy']:.4f}), "
          f"NSP accuracy {summary['eval_nsp_accuracy']:.4f} (majority label: "
          f"{summary['baseline_nsp_accuracy']:.4f}); {seconds:.0f}s")


if __name__ == "__main__":
  cli.run_in_workdir(train_and_evaluate, report, "configs/pretrain.py")
