"""A workdir as a Hugging Face directory (`python -m lmjax.export`).

A fine-tuning run's best checkpoint becomes a BertForSequenceClassification
(config.json with id2label, model.safetensors), a pretraining run's newest
checkpoint a BertForPreTraining (ModernBERT's: a
ModernBertForSequenceClassification, a ModernBertForMaskedLM); each with its
tokenizer's files (vocab.txt,
and tokenizer.json where the run has one, for WordPiece; tokenizer.model for
SentencePiece).
transformers loads the directory as it is; `hf:DIR` starts lmjax from it.
"""

import json
import shutil

import ml_collections
import numpy as np

from lmjax import parallel, paths
from lmjax.data import tasks
from lmjax.data.shard_writing import staging_directory
from lmjax.data.tokenization import Tokenizer, HfTokenizer
from lmjax.errors import UserError
from lmjax.interop.hf import save_hf_bert
from lmjax.interop.hf_modernbert import save_hf_modernbert, special_token_ids
from lmjax.model import architectures
from lmjax.model.modernbert import ModernBertConfig
from lmjax.runs import init_sources


def export(workdir: paths.PathLike, output: paths.PathLike, overwrite: bool = False) -> dict:
  """Writes `workdir`'s model to `output`; returns what was written."""
  for flag, value in (("--workdir", workdir), ("--output", output)):
    if not str(value).strip():
      raise UserError(f"{flag} is empty; name a directory")
  if paths.is_remote(output):
    raise UserError(f"--output={output}: write a local directory (then copy it)")
  workdir, output = paths.resolve(workdir), paths.resolve(output)
  if not (workdir / "config.json").is_file():
    raise UserError(f"{workdir}: not an lmjax workdir (no config.json)")
  if output.exists() and not output.is_dir():
    raise UserError(f"--output={output} is a file, not a directory")
  if output.exists() and any(output.iterdir()) and not overwrite:
    raise UserError(f"{output} exists and is not empty; choose another --output or pass "
                    "--overwrite")
  saved = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  tokenizer = Tokenizer.load(workdir)
  mesh = parallel.make_mesh()
  if (workdir / "task.json").is_file():
    architecture, step, model_cfg, params, labels = _classifier(workdir, saved, mesh)
  elif "data" in saved:
    model_cfg = init_sources.pretraining_model(workdir, saved, tokenizer)
    modern = isinstance(model_cfg, ModernBertConfig)
    architecture, labels = "ModernBertForMaskedLM" if modern else "BertForPreTraining", None
    step, params = init_sources.pretrained_params(workdir, str(workdir), model_cfg, saved.data,
                                                  mesh)
  else:
    raise UserError(f"{workdir}: neither a fine-tuning nor a pretraining workdir")
  params = {k: _host(v) for k, v in params.items()}
  files = dict(tokenizer.files)
  if isinstance(tokenizer, HfTokenizer) and tokenizer.is_wordpiece:  # for Google's readers too
    files.setdefault("vocab.txt", tokenizer.vocab_txt())
  staging = staging_directory(output)  # those of killed exports go
  try:
    model_cfg = model_cfg.replace(scan_layers=False)
    try:
      if isinstance(model_cfg, ModernBertConfig):
        special = tokenizer.special
        save_hf_modernbert(model_cfg, params, staging, files, labels,
                           special_token_ids(special.pad, special.cls, special.sep))
      else:
        save_hf_bert(model_cfg, params, staging, tokenizer=files, labels=labels)
    except ValueError as e:  # what transformers cannot express
      raise UserError(f"{workdir}: {e}") from None
    if output.exists():
      shutil.rmtree(output)
    staging.rename(output)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return dict(architecture=architecture, step=step, output=str(output),
              labels=labels, tokenizer=sorted(files))


def _classifier(workdir, saved, mesh):
  task = tasks.Task.from_json(json.loads((workdir / "task.json").read_text()))
  model_cfg = architectures.from_dict(json.loads((workdir / "model.json").read_text()))
  length = saved.task.max_seq_length
  example = {k: np.zeros((1, length), np.int32)
             for k in ("input_ids", "segment_ids", "input_mask")}
  model = architectures.classification_model(model_cfg, task.num_labels)
  step, params = init_sources.best_params(workdir, model, example, mesh)
  labels = ["score"] if task.is_regression else list(task.labels)
  name = ("ModernBertForSequenceClassification" if isinstance(model_cfg, ModernBertConfig)
          else "BertForSequenceClassification")
  return name, step, model_cfg, params, labels


def _host(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(np.asarray, tree)
