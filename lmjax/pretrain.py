"""Pretrains BERT (MLM + NSP) or ModernBERT (MLM alone):

  python -m lmjax.pretrain --config=configs/pretrain.py --workdir=DIR

Any config field can be overridden, e.g. --config.train.steps=100. Running
again with the same DIR resumes from its latest checkpoint.
"""

from lmjax import cli


def train(config, workdir: str) -> dict:
  # Imported here: the parent of a multi-process run (lmjax.distributed)
  # only passes output through and needs none of it.
  from lmjax.runs.pretraining import train_and_evaluate  # pylint: disable=import-outside-toplevel
  return train_and_evaluate(config, workdir)


def report(summary: dict, seconds: float) -> str | None:
  """The final evaluation next to the baselines, in a line."""
  if "eval_mlm_accuracy" not in summary:
    return None
  parts = [f"step {summary['step']}: eval MLM accuracy {summary['eval_mlm_accuracy']:.4f} "
           f"(always the most frequent token: {summary['baseline_mlm_accuracy']:.4f})"]
  if "eval_nsp_accuracy" in summary:
    parts.append(f"NSP accuracy {summary['eval_nsp_accuracy']:.4f} (majority label: "
                 f"{summary['baseline_nsp_accuracy']:.4f})")
  if "eval_cp_accuracy" in summary:
    parts.append(f"CP top-1 in batch {summary['eval_cp_accuracy']:.4f}")
  if "eval_probe_accuracy" in summary:
    parts.append(f"linear probe accuracy {summary['eval_probe_accuracy']:.4f}")
  return f"{', '.join(parts)}; {seconds:.0f}s"


if __name__ == "__main__":
  cli.run_in_workdir(train, report, "configs/pretrain.py")
