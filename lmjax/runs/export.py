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

import shutil

import numpy as np

from lmjax import paths
from lmjax.data.shard_writing import staging_directory
from lmjax.data.tokenization import HfTokenizer
from lmjax.errors import UserError
from lmjax.interop.hf import save_hf_bert
from lmjax.interop.hf_modernbert import save_hf_modernbert, special_token_ids
from lmjax.model.modernbert import ModernBertConfig
from lmjax.runs import trained


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
  loaded = trained.load(workdir)
  model_cfg, tokenizer, step = loaded.config, loaded.tokenizer, loaded.step
  modern = isinstance(model_cfg, ModernBertConfig)
  if loaded.task is not None:
    task = loaded.task
    architecture = ("ModernBertForSequenceClassification" if modern
                    else "BertForSequenceClassification")
    labels = ["score"] if task.is_regression else list(task.labels)
  else:
    architecture, labels = "ModernBertForMaskedLM" if modern else "BertForPreTraining", None
  params = loaded.params
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


def _host(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(np.asarray, tree)
