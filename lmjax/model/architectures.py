"""The encoders a run can train, `config.model.architecture`: BERT and
ModernBERT, each with its config, its pretraining and classification
models, and what a classifier takes from a pretrained model.

A run's `model` section names the architecture and a named size; the rest
of its fields are either shared (dropout, dtypes, layout, attention, a
classifier's pooling) or one architecture's own (ModernBERT's window and its
global-layer period), which the other refuses unless left at their defaults.
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
MODERNBERT_FIELDS = {name: getattr(ModernBertConfig, name)
                     for name in ("local_window", "global_every")}
# The section's dropout fields, as ModernBERT's: `dropout_rate` drops the
# embeddings, the feed-forward output and the classifier's input, and
# `attention_dropout_rate` the attention probabilities and output.
_MODERNBERT_DROPOUT = {"dropout_rate": ("embedding_dropout_rate", "mlp_dropout_rate",
                                        "classifier_dropout_rate"),
                       "attention_dropout_rate": ("attention_dropout_rate",)}


def _modernbert_names(values: dict[str, Any]) -> dict[str, Any]:
  """`values` with the section's shared dropout fields as ModernBERT's."""
  values = dict(values)
  for shared, own in _MODERNBERT_DROPOUT.items():
    rate = values.pop(shared, None)
    if rate is not None:
      values.update(dict.fromkeys(own, rate))
  return values


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
  return ModernBertConfig.named(size, **{**_modernbert_names(values), **fields})


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
  for shared in _MODERNBERT_DROPOUT:  # named as the section names them
    rate = values.get(shared, 0.0)
    if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
      raise ConfigError(f"{name}.{shared} must be in [0, 1), got {rate!r}")
  values.pop("architecture", None)
  size = values.pop("size")
  values = _modernbert_names(values)
  unknown = set(values) - {f.name for f in dataclasses.fields(ModernBertConfig)}
  if unknown:
    raise ConfigError(f"{name} has no field {sorted(unknown)[0]!r}")
  layers, hidden, heads, width = modernbert.SIZES[size]
  modernbert.check_values({**dataclasses.asdict(ModernBertConfig()), "num_layers": layers,
                           "hidden_size": hidden, "num_heads": heads,
                           "intermediate_size": width, **values}, f"{name}.")


# The model section's fields a run may set on a pretrained encoder (how it
# computes, its dropout, a classifier's pooling); the others (sizes,
# vocabulary, layer pattern) are the checkpoint's.
RUNTIME_FIELDS = ("dropout_rate", "attention_dropout_rate", "dtype", "param_dtype",
                  "scan_layers", "remat_policy", "attention_impl", "classifier_pooling")


def runtime_fields(architecture: str, section: Mapping[str, Any]) -> dict[str, Any]:
  """The runtime fields of a `model` section, as the architecture's config
  names them."""
  values = {k: section[k] for k in RUNTIME_FIELDS if k in section}
  return values if architecture == "bert" else _modernbert_names(values)


def with_runtime(cfg: ModelConfig, section: Mapping[str, Any]) -> ModelConfig:
  """`cfg` (a checkpoint's) with the runtime fields of a `model` section."""
  return cfg.replace(**runtime_fields(name_of(cfg), section))


def check_same(cfg: ModelConfig, section: Mapping[str, Any], origin: str) -> None:
  """ConfigError when a checkpoint's architecture is not the one the run's
  `model` section names."""
  wanted = section.get("architecture", "bert")
  if name_of(cfg) != wanted:
    raise ConfigError(f"{origin} is a {name_of(cfg)} model, but config.model.architecture="
                      f"{wanted}; set --config.model.architecture={name_of(cfg)}")


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
