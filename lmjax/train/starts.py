"""Where a fine-tuned encoder starts: a pretraining run's workdir, a Hugging
Face BERT directory, or random weights, each with the tokenizer that belongs
to it."""

import dataclasses
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from lmjax.data import builtin
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import CheckpointError, UserError
from lmjax.interop.hf import load_hf_bert
from lmjax.model import BertConfig, BertForPreTraining
from lmjax.model.encoder import stack_layers, unstack_layers
from lmjax.train import checkpoint, optimizer, steps
from lmjax.train.loop import model_config

# Model fields a fine-tuning run may set on a pretrained encoder; the others
# (sizes, vocabulary) are the checkpoint's.
RUNTIME_FIELDS = ("dropout_rate", "attention_dropout_rate", "dtype", "param_dtype",
                  "scan_layers", "remat_policy", "attention_impl")
@dataclasses.dataclass
class Start:
  """Where the encoder starts: its config, its weights ({'bert': ...}, or None
  for random), its tokenizer and a description for the logs."""
  config: BertConfig
  params: dict | None
  tokenizer: Tokenizer
  origin: str


def _overrides(model) -> dict:
  return {k: model[k] for k in RUNTIME_FIELDS}


def load_start(config, mesh) -> Start:
  """The encoder config, weights and tokenizer `config.init` names."""
  init, task = config.init, config.task
  if init.random:
    tokenizer = Tokenizer.load(task.tokenizer or builtin.TOKENIZER_FILE)
    return Start(model_config(config.model, tokenizer.vocab_size), None, tokenizer,
                 "random weights")
  if init.from_hf:
    path = Path(init.from_hf).expanduser()
    model_cfg, params = load_hf_bert(path, heads=False, **_overrides(config.model))
    tokenizer = _tokenizer(path, task.tokenizer, "config.init.from_hf")
    start = Start(model_cfg, params, tokenizer, f"Hugging Face BERT {path}")
  else:
    start = _load_pretraining_run(Path(init["from"]).expanduser(), config, mesh)
  if start.tokenizer.vocab_size != start.config.vocab_size:
    raise UserError(f"{start.origin}: its tokenizer has {start.tokenizer.vocab_size} "
                    f"pieces but the model's vocabulary has {start.config.vocab_size} rows; "
                    "the tokenizer does not belong to this checkpoint")
  return start


def _tokenizer(directory: Path, configured: str, field: str) -> Tokenizer:
  """The tokenizer that travels with a checkpoint directory; a different
  one named in the config is an error."""
  own = directory / "tokenizer.model"
  if own.is_file():
    tokenizer = Tokenizer.load(own)
    if configured and Tokenizer.load(configured).fingerprint != tokenizer.fingerprint:
      raise UserError(f"config.task.tokenizer ({configured}) is not the tokenizer of "
                      f"{field}={directory} ({own}); leave config.task.tokenizer empty")
    return tokenizer
  if configured:
    return Tokenizer.load(configured)
  raise UserError(f"{directory}: no tokenizer.model (lmjax reads sentencepiece models); "
                  "name the checkpoint's tokenizer with --config.task.tokenizer=FILE")


def _load_pretraining_run(path: Path, config, mesh) -> Start:
  field = f"config.init.from={path}"
  if not (path / "config.json").is_file():
    raise UserError(f"{field}: not a pretraining workdir (no config.json); run "
                    f"python -m lmjax.pretrain --config=configs/pretrain.py --workdir={path} "
                    "first, or set --config.init.from_hf=PATH or --config.init.random=True")
  saved = ml_collections.ConfigDict(json.loads((path / "config.json").read_text()))
  tokenizer = _tokenizer(path, config.task.tokenizer, "config.init.from")
  pretrained_cfg = model_config(saved.model, tokenizer.vocab_size)
  if not (path / "checkpoints").is_dir():
    raise UserError(f"{field}: no checkpoints yet")
  ckpts = checkpoint.Checkpoints(path / "checkpoints")
  try:
    step = ckpts.latest_step()
    if step is None:
      raise UserError(f"{field}: no checkpoints yet")
    length, predictions = saved.data.max_seq_length, saved.data.max_predictions_per_seq
    example = dict(input_ids=np.zeros((1, length), np.int32),
                   segment_ids=np.zeros((1, length), np.int32),
                   input_mask=np.ones((1, length), np.int32),
                   masked_positions=np.zeros((1, predictions), np.int32))
    abstract = steps.abstract_train_state(BertForPreTraining(pretrained_cfg),
                                          optimizer.create_optimizer(saved.train), mesh,
                                          example)
    state, _, _ = ckpts.restore(step, abstract)
  finally:
    ckpts.close()
  bert = state.params["bert"]
  model_cfg = pretrained_cfg.replace(**_overrides(config.model))
  if model_cfg.scan_layers != pretrained_cfg.scan_layers:
    relayout = stack_layers if model_cfg.scan_layers else unstack_layers
    bert = {**bert, "encoder": relayout(bert["encoder"])}
  return Start(model_cfg, {"bert": bert}, tokenizer, f"pretraining run {path} (step {step})")


def with_encoder(state, shardings, params: dict):
  """`state` with the encoder weights of `params` ({'bert': ...}), in the
  state's shardings and dtypes; the classifier keeps its initial weights."""
  target = state.params["bert"]
  if (jax.tree.structure(target) != jax.tree.structure(params["bert"]) or
      any(a.shape != b.shape for a, b in zip(jax.tree.leaves(target),
                                             jax.tree.leaves(params["bert"])))):
    raise CheckpointError("the checkpoint's encoder does not fit the model its config "
                          "describes")
  bert = jax.tree.map(lambda x, t, s: jax.device_put(x, s).astype(t.dtype),
                      params["bert"], target, shardings.params["bert"])
  return state.replace(params={**state.params, "bert": bert})
