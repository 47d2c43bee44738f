"""Fine-tunes a BERT encoder for classification or regression:

  python -m lmjax.finetune --config=configs/finetune.py --workdir=DIR

and predicts with the result:

  python -m lmjax.finetune --config=configs/finetune.py --workdir=DIR \\
      --config.mode=predict --config.predict.input=texts.txt

Running again with the same DIR resumes from its latest checkpoint.
"""

from lmjax import cli


def run(config, workdir: str) -> dict:
  # Imported here: the parent of a multi-process run (lmjax.distributed)
  # only passes output through and needs none of it.
  # pylint: disable=import-outside-toplevel
  if config.mode == "predict":
    from lmjax.runs.prediction import predict
    return predict(config, workdir)
  from lmjax.runs.finetuning import finetune
  return finetune(config, workdir)


def report(summary: dict, seconds: float) -> str | None:
  """Where the predictions went, or the best checkpoint's main metric next
  to the majority class's."""
  if "predictions" in summary:
    return f"wrote {summary['predictions']} predictions to {summary['output']}"
  metric = summary["main_metric"]
  for prefix, split in (("test", "test"), ("eval", "validation")):
    if f"{prefix}_{metric}" in summary:
      majority = summary.get(f"{prefix}_majority_{metric}")
      return (f"{summary['task']}: {split} {metric} {summary[f'{prefix}_{metric}']:.4f}"
              + (f" (majority class: {majority:.4f})" if majority is not None else "")
              + f", best checkpoint step {summary['best_step']}; {seconds:.0f}s")
  return None


if __name__ == "__main__":
  cli.run_in_workdir(run, report, "configs/finetune.py")
