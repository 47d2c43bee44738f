"""Predict mode of `lmjax.finetune`: the labels and class probabilities (or
scores) of a fine-tuned workdir's best checkpoint for new texts, as JSONL.

Only the best parameters are read; no optimizer exists in predict mode.
"""

import json

import jax
import numpy as np
import scipy.special

from lmjax import parallel, paths
from lmjax.data import tasks
from lmjax.data.task_input import bucket_lengths
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import UserError
from lmjax.model import architectures
from lmjax.runs import init_sources
from lmjax.runs.finetuning import check_config, packed_length
from lmjax.runs.scoring import device_batches, logits
from lmjax.train import classification, steps
from lmjax.trainer import scaffold

_NEEDED = ("task.json", "model.json", "config.json", "best")


def _record(texts: tuple[str, ...], row: np.ndarray, task: tasks.Task) -> dict:
  record = dict(zip(("text", "text_pair"), texts, strict=False))
  if task.is_regression:
    record["score"] = round(float(row[0]), 6)
  else:
    probabilities = scipy.special.softmax(row)
    record["label"] = task.labels[int(row.argmax())]
    record["probabilities"] = {name: round(float(p), 6)
                               for name, p in zip(task.labels, probabilities, strict=True)}
  return record


def predict(config, workdir: paths.PathLike) -> dict:
  """Writes the predictions of DIR's best checkpoint for `config.predict.input`;
  returns a summary (count, truncated, output, checkpoint step)."""
  check_config(config)
  workdir = paths.resolve(workdir)
  if not all((workdir / name).exists() for name in _NEEDED):
    raise UserError(f"{workdir}: no fine-tuned model (run python -m lmjax.finetune "
                    f"--workdir={workdir} first)")
  task = tasks.Task.from_json(json.loads((workdir / "task.json").read_text()))
  model_cfg = architectures.from_dict(json.loads((workdir / "model.json").read_text()))
  saved = json.loads((workdir / "config.json").read_text())
  texts = tasks.read_texts(config.predict.input, task)
  encoded = tasks.encode(tasks.Examples(texts, None),
                         Tokenizer.load(workdir),
                         saved["task"]["max_seq_length"])
  mesh = parallel.make_mesh(**config.mesh)
  model = architectures.classification_model(model_cfg, task.num_labels)
  example = {k: v[:1] for k, v in encoded.arrays.items()}
  step, params = init_sources.best_params(workdir, model, example, mesh)
  eval_step = steps.jit_eval_step(classification.make_eval_step(model),
                                  jax.tree.map(lambda x: x.sharding, params), mesh)
  buckets = bucket_lengths(saved["task"]["max_seq_length"],
                           saved["task"].get("length_buckets", 1))  # 1: an older workdir
  rows = packed_length(saved["task"])
  if rows is not None:  # rows that hold the longest new text (predictions do not depend on it)
    rows = max(rows, int(encoded.arrays["input_mask"].sum(1).max(initial=0)))
  out = logits(eval_step, params, device_batches(encoded.arrays, config.train.eval_batch_size,
                                                 mesh, buckets, rows))
  output = paths.resolve(config.predict.output or workdir / "predictions.jsonl")
  paths.check_writable(output.parent)
  if scaffold.is_lead():
    output.parent.mkdir(parents=True, exist_ok=True)
    paths.write_whole(output, "".join(
        json.dumps(_record(pair, row, task), ensure_ascii=False) + "\n"
        for pair, row in zip(texts, out, strict=True)))
  return dict(predictions=len(texts), truncated=encoded.truncated, output=str(output),
              checkpoint_step=step)
