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


AT_MAJORITY = (
    "its best validation accuracy is the majority class's: the model learned nothing the "
    "class counts do not say; try a higher --config.train.learning_rate (a tiny encoder "
    "takes 1e-3), more --config.train.epochs, or a pretrained --config.init.source")


def report(summary: dict, seconds: float) -> str | None:
  """Where the predictions went, or the best checkpoint's main metric next
  to the baselines' (the majority class, TF-IDF with a linear model)."""
  if "predictions" in summary:
    return f"wrote {summary['predictions']} predictions to {summary['output']}"
  metric = summary["main_metric"]
  for prefix, split in (("test", "test"), ("eval", "validation")):
    if f"{prefix}_{metric}" in summary:
      baselines = [(name, summary.get(f"{prefix}_{key}_{metric}")) for name, key in
                   (("majority class", "majority"), ("TF-IDF + linear model", "tfidf"))]
      shown = ", ".join(f"{name}: {value:.4f}" for name, value in baselines if value is not None)
      return (f"{summary['task']}: {split} {metric} {summary[f'{prefix}_{metric}']:.4f}"
              + (f" ({shown})" if shown else "")
              + f", best checkpoint step {summary['best_step']}; {seconds:.0f}s"
              + (f"\n{AT_MAJORITY}" if summary.get("at_majority_class") else ""))
  return None


if __name__ == "__main__":
  cli.run_in_workdir(run, report, "configs/finetune.py")
