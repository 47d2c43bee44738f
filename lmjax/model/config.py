"""BertConfig: the hyper-parameters of a BERT encoder, and BERT's named sizes."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lmjax.errors import ConfigError

# Activation-checkpointing policies for `nn.remat`, by name: 'none' keeps every
# activation (no remat); 'full' keeps only each layer's input.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ATTENTION_IMPLS = ("xla", "cudnn")
POOLING = ("cls", "mean")
# Feed-forward activations: 'gelu' is BERT's exact erf GELU.
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

# (num_layers, hidden_size) of BERT's released sizes; heads are hidden / 64
# and the feed-forward width is 4 * hidden, as in google-research/bert.
SIZES = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


def sized_fields(size: str) -> dict[str, int]:
  """The BertConfig fields BERT's named `size` fixes: its layers and width,
  heads of 64 dimensions and a feed-forward 4 times the width."""
  layers, hidden = SIZES[size]
  return dict(num_layers=layers, hidden_size=hidden, num_heads=hidden // 64,
              intermediate_size=4 * hidden)


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT encoder; the defaults are BERT-base's."""

  vocab_size: int = 30522  # V: word-piece vocabulary
  hidden_size: int = 768  # D: model / embedding width
  num_layers: int = 12  # number of encoder layers
  num_heads: int = 12  # N: attention heads; head width is D / N
  intermediate_size: int = 3072  # F: feed-forward width
  max_position: int = 512  # longest sequence the position table covers
  type_vocab_size: int = 2  # number of segment (token type) ids
  dropout_rate: float = 0.1  # hidden dropout (embeddings, sub-layer outputs)
  attention_dropout_rate: float = 0.1  # dropout on attention probabilities
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02  # stddev of the truncated-normal init
  hidden_act: str = "gelu"
  dtype: str = "float32"  # computation dtype of activations
  param_dtype: str = "float32"  # storage dtype of parameters
  scan_layers: bool = False  # nn.scan over layers (params stacked on axis 0)
  remat_policy: str = "none"  # one of REMAT_POLICIES
  # 'xla' anywhere; 'cudnn' for fused GPU attention, which reads padding as
  # key lengths (real tokens first, as in every lmjax batch).
  attention_impl: str = "xla"
  # What a classifier reads: 'cls', the pooler at [CLS] (BERT's); 'mean', the
  # pooler on the last layer's mean over each example's real tokens.
  classifier_pooling: str = "cls"

  def __post_init__(self):
    _check_values(dataclasses.asdict(self))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def named(cls, size: str, **overrides: Any) -> "BertConfig":
    """Returns BERT's config of a named size (tiny .. large), with overrides."""
    _check_choice("size", size, tuple(SIZES))
    return cls().replace(**{**sized_fields(size), **overrides})

  def replace(self, **changes: Any) -> "BertConfig":
    """Returns a copy with `changes` applied (and validated)."""
    _check_names(changes, "BertConfig has no field")
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_section(cls, section: Mapping[str, Any], **fields: Any) -> "BertConfig":
    """The config of a run config's `model` section: `size` names BERT's
    size, the other keys are fields; `fields` (the vocabulary, say) win."""
    values = dict(section)
    return cls.named(values.pop("size"), **{**values, **fields})


def check_section(section: Mapping[str, Any], section_name: str = "config.model") -> None:
  """Raises ConfigError for a `model` section no BertConfig can be made
  from, naming the field, without making one."""
  values = dict(section)
  _check_choice(f"{section_name}.size", values.pop("size", None), tuple(SIZES))
  _check_names(values, f"{section_name} has no field")
  defaults = dataclasses.asdict(BertConfig())
  _check_values({**defaults, **sized_fields(section["size"]), **values}, f"{section_name}.")


def _check_names(values: Mapping[str, Any], message: str) -> None:
  unknown = set(values) - {f.name for f in dataclasses.fields(BertConfig)}
  if unknown:
    raise ConfigError(f"{message} {sorted(unknown)[0]!r}")


def _check_values(v: Mapping[str, Any], prefix: str = "") -> None:
  """Raises ConfigError naming the first field of `v` (every BertConfig
  field) with an impossible value."""
  for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
               "intermediate_size", "max_position", "type_vocab_size"):
    value = v[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f"{prefix}{name} must be a positive integer, got {value!r}")
  if v["hidden_size"] % v["num_heads"]:
    raise ConfigError(f"{prefix}hidden_size ({v['hidden_size']}) must be divisible by "
                      f"num_heads ({v['num_heads']})")
  for name in ("dropout_rate", "attention_dropout_rate"):
    if not 0.0 <= v[name] < 1.0:
      raise ConfigError(f"{prefix}{name} must be in [0, 1), got {v[name]!r}")
  for name in ("layer_norm_eps", "initializer_range"):
    if not v[name] > 0:
      raise ConfigError(f"{prefix}{name} must be positive, got {v[name]!r}")
  _check_choice(f"{prefix}hidden_act", v["hidden_act"], tuple(ACTIVATIONS))
  _check_choice(f"{prefix}remat_policy", v["remat_policy"], tuple(REMAT_POLICIES))
  _check_choice(f"{prefix}attention_impl", v["attention_impl"], ATTENTION_IMPLS)
  _check_choice(f"{prefix}classifier_pooling", v["classifier_pooling"], POOLING)
  check_dtypes(v, prefix)
  if v["attention_impl"] == "cudnn" and v["attention_dropout_rate"]:
    raise ConfigError(f"{prefix}attention_dropout_rate must be 0 with attention_impl="
                      "'cudnn' (fused attention has no dropout on its probabilities)")


def check_dtypes(v: Mapping[str, Any], prefix: str = "") -> None:
  """ConfigError when `dtype` or `param_dtype` of `v` names no floating dtype."""
  for name in ("dtype", "param_dtype"):
    try:
      ok = jnp.issubdtype(jnp.dtype(v[name]), jnp.floating)
    except TypeError:
      ok = False
    if not ok:
      raise ConfigError(f"{prefix}{name} must be a floating dtype name, got {v[name]!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
