"""The encoders a run can train, `config.model.architecture`: BERT and
ModernBERT, each with its config, its pretraining and classification
models, and what a classifier takes from a pretrained model.

A run's `model` section names the architecture and a named size; the rest
of its fields are either shared (dropout, dtypes, layout, attention) or one
architecture's own (ModernBERT's window, its global-layer period, its
pooling), which the other refuses unless left at their defaults.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from lmjax.errors import ConfigError
from lmjax.model import config as bert_config
from lmjax.model import modernbert
from lmjax.model.config import BertConfig
from lmjax.model.heads import BertForPreTraining, BertForSequenceClassification
from lmjax.model.modernbert import (ModernBertConfig, ModernBertForMaskedLM,
                                    ModernBertForSequenceClassification)

ModelConfig = BertConfig | ModernBertConfig
NAMES = ("bert", "modernbert")

# The model section's fields that only ModernBERT reads, with their defaults
# (those of its released sizes).
MODERNBERT_FIELDS = {"local_window": 128, "global_every": 3, "classifier_pooling": "cls"}
# The section's dropout fields, as ModernBERT's: `dropout_rate` drops the
# embeddings, the feed-forward output and the classifier's input, and
# `attention_dropout_rate` the attention probabilities and output.
_MODERNBERT_DROPOUT = {"dropout_rate": ("embedding_dropout_rate", "mlp_dropout_rate",
                                        "classifier_dropout_rate"),
                       "attention_dropout_rate": ("attention_dropout_rate",)}


def name_of(cfg: ModelConfig) -> str:
  return "modernbert" if isinstance(cfg, ModernBertConfig) else "bert"


def sizes(architecture: str) -> tuple[str, ...]:
  return tuple(modernbert.SIZES if architecture == "modernbert" else bert_config.SIZES)


def _check_architecture(value: Any, field: str) -> str:
  if value not in NAMES:
    raise ConfigError(f"{field} must be one of {', '.join(NAMES)}; got {value!r}")
  return value


def from_section(section: Mapping[str, Any], **fields: Any) -> ModelConfig:
  """The model config of a run config's `model` section; `fields` (the
  vocabulary, say) win."""
  values = dict(section)
  architecture = _check_architecture(values.pop("architecture", "bert"),
                                     "config.model.architecture")
  size = values.pop("size")
  if architecture == "bert":
    for name in MODERNBERT_FIELDS:
      values.pop(name, None)
    return BertConfig.named(size, **{**values, **fields})
  for shared, own in _MODERNBERT_DROPOUT.items():
    rate = values.pop(shared, None)
    if rate is not None:
      values.update(dict.fromkeys(own, rate))
  return ModernBertConfig.named(size, **{**values, **fields})


def check_section(section: Mapping[str, Any], name: str = "config.model") -> None:
  """Raises ConfigError for a `model` section no model config can be made
  from, naming the field, without making one."""
  values = dict(section)
  architecture = _check_architecture(values.get("architecture", "bert"), f"{name}.architecture")
  if values.get("size") not in sizes(architecture):
    raise ConfigError(f"{name}.size must be one of {', '.join(sizes(architecture))} for "
                      f"architecture={architecture}; got {values.get('size')!r}")
  if architecture == "bert":
    for field, default in MODERNBERT_FIELDS.items():
      if values.get(field, default) != default:
        raise ConfigError(f"{name}.{field} is ModernBERT's; with {name}.architecture=bert "
                          f"leave it at {default!r}")
    values.pop("architecture", None)
    for field in MODERNBERT_FIELDS:
      values.pop(field, None)
    bert_config.check_section(values, name)
    return
  try:
    from_section(section, vocab_size=1)
  except ConfigError as e:
    raise ConfigError(f"{name}: {e}") from None


def to_dict(cfg: ModelConfig) -> dict[str, Any]:
  """A run's model.json: the architecture and every field."""
  return {"architecture": name_of(cfg), **dataclasses.asdict(cfg)}


def from_dict(values: Mapping[str, Any]) -> ModelConfig:
  """The model config of a model.json (one without `architecture`, written
  before there was a choice, is BERT's)."""
  values = dict(values)
  architecture = _check_architecture(values.pop("architecture", "bert"), "architecture")
  return (ModernBertConfig if architecture == "modernbert" else BertConfig)(**values)


def pretraining_model(cfg: ModelConfig) -> nn.Module:
  """BertForPreTraining (MLM + NSP heads, a pooled output for CP) or
  ModernBertForMaskedLM (MLM alone)."""
  if isinstance(cfg, ModernBertConfig):
    return ModernBertForMaskedLM(cfg)
  return BertForPreTraining(cfg)


def classification_model(cfg: ModelConfig, num_labels: int) -> nn.Module:
  if isinstance(cfg, ModernBertConfig):
    return ModernBertForSequenceClassification(cfg, num_labels)
  return BertForSequenceClassification(cfg, num_labels)


def objectives(cfg: ModelConfig) -> tuple[str, ...]:
  """The pretraining objectives the architecture's model has a place for:
  ModernBERT has no NSP head and no pooled output (CP reads one)."""
  return ("mlm",) if isinstance(cfg, ModernBertConfig) else ("mlm", "nsp", "cp")


def encoder_parts(cfg: ModelConfig) -> tuple[str, ...]:
  """The parameters a classifier takes from a pretraining model: BERT's
  encoder with its pooler; ModernBERT's encoder and its head (dense +
  activation + norm), which its classifier reads the pooled output through."""
  return ("model", "head") if isinstance(cfg, ModernBertConfig) else ("bert",)


def encoder_name(cfg: ModelConfig) -> str:
  """The parameter collection that holds the layers (`encoder` in it)."""
  return encoder_parts(cfg)[0]
