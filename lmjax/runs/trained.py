"""A trained workdir, read back: its model, weights and tokenizer (and a
fine-tuning run's task), for export and for research scripts.

A pretraining workdir gives its newest checkpoint that can be restored, a
fine-tuning workdir its best one; only the weights are read.
"""

import dataclasses
import functools
import json
from collections.abc import Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lmjax import parallel, paths
from lmjax.data import tasks
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import UserError
from lmjax.model import architectures
from lmjax.model.architectures import ModelConfig
from lmjax.model.encoder import BertModel
from lmjax.model.internals import apply_with_internals, pooled_layers
from lmjax.model.modernbert import ModernBertConfig, ModernBertModel
from lmjax.runs import init_sources


@dataclasses.dataclass
class Trained:
  """`model` is the run's own (BertForPreTraining or ModernBertForMaskedLM
  for pretraining, a classifier for fine-tuning) and `params` its weights;
  `max_seq_length` is the longest sequence it trained on; `task` is a
  fine-tuning run's."""
  config: ModelConfig
  model: nn.Module
  params: dict
  tokenizer: Tokenizer
  step: int
  max_seq_length: int
  task: tasks.Task | None = None

  def encoder(self) -> tuple[nn.Module, dict]:
    """(the encoder alone, its weights): BertModel (whose `__call__` returns
    the sequence and pooled outputs) or ModernBertModel (the sequence
    output). Its inputs are `encoder.INPUTS`, in that order."""
    return encoder_of(self.config), self.params[architectures.encoder_name(self.config)]

  def with_random_encoder(self, seed: int = 0) -> "Trained":
    """The same model with its encoder's weights drawn afresh (a baseline)."""
    encoder = encoder_of(self.config)
    ids = np.zeros((1, 8), np.int32)
    weights = encoder.init(jax.random.key(seed), *(ids for _ in encoder.INPUTS))["params"]
    name = architectures.encoder_name(self.config)
    return dataclasses.replace(self, params={**self.params, name: nn.unbox(weights)}, step=0)

  def features(self, texts: Sequence[tuple[str, ...]], batch_size: int = 64,
               max_seq_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every layer's features of each text (a tuple of one text or a pair),
    with no dropout: (the mean over its tokens, its [CLS] token's), each
    [layers + 1, N, D] float32, the embeddings first. Texts longer than
    `max_seq_length` (the run's own by default) lose their ends."""
    length = max_seq_length or self.max_seq_length
    arrays = tasks.encode(tasks.Examples(list(texts), None), self.tokenizer, length).arrays
    encoder, params = self.encoder()
    pooled = _pooled_layers_of(encoder)
    means, firsts = [], []
    for start in range(0, len(texts), batch_size):
      batch = {k: _padded(v[start:start + batch_size], batch_size) for k, v in arrays.items()}
      mean, first = pooled(params, batch)
      rows = min(batch_size, len(texts) - start)
      means.append(np.asarray(mean)[:, :rows])
      firsts.append(np.asarray(first)[:, :rows])
    return np.concatenate(means, axis=1), np.concatenate(firsts, axis=1)


@functools.lru_cache(maxsize=8)
def _pooled_layers_of(encoder: nn.Module):
  """`(params, batch) -> (means, firsts)` of `encoder`, jitted once per
  encoder config (a probe's trained and random encoders share it)."""

  @jax.jit
  def pooled(params, batch):
    _, internals = apply_with_internals(encoder, {"params": params},
                                        *(batch[k] for k in encoder.INPUTS))
    return pooled_layers(internals.hidden_states, batch["input_mask"])

  return pooled


def _padded(rows: np.ndarray, count: int) -> np.ndarray:
  """`rows` with zero rows after them up to `count` (one compiled shape)."""
  return np.concatenate([rows, np.zeros((count - len(rows), *rows.shape[1:]), rows.dtype)])


def encoder_of(config: ModelConfig) -> nn.Module:
  """The encoder module of a model config (random weights: `.init` it)."""
  return ModernBertModel(config) if isinstance(config, ModernBertConfig) else BertModel(config)


def load(workdir: paths.PathLike, mesh=None) -> Trained:
  """The model of a pretraining or fine-tuning workdir; UserError when it is
  neither or has no checkpoint. Weights land in `mesh`'s shardings (all
  devices on `data`, replicated, by default)."""
  if not str(workdir).strip():
    raise UserError("the workdir is empty; name a directory")
  workdir = paths.resolve(workdir)
  if not (workdir / "config.json").is_file():
    raise UserError(f"{workdir}: not an lmjax workdir (no config.json)")
  saved = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  tokenizer = Tokenizer.load(workdir)
  mesh = mesh or parallel.make_mesh()
  if (workdir / "task.json").is_file():
    task = tasks.Task.from_json(json.loads((workdir / "task.json").read_text()))
    config = architectures.from_dict(json.loads((workdir / "model.json").read_text()))
    length = saved.task.max_seq_length
    example = {k: np.zeros((1, length), np.int32)
               for k in ("input_ids", "segment_ids", "input_mask")}
    model = architectures.classification_model(config, task.num_labels)
    step, params = init_sources.best_params(workdir, model, example, mesh)
    return Trained(config, model, params, tokenizer, step, length, task)
  if "data" not in saved:
    raise UserError(f"{workdir}: neither a fine-tuning nor a pretraining workdir")
  config = init_sources.pretraining_model(workdir, saved, tokenizer)
  step, params = init_sources.pretrained_params(workdir, str(workdir), config, saved.data,
                                                mesh)
  return Trained(config, architectures.pretraining_model(config), params, tokenizer, step,
                 saved.data.max_seq_length)
