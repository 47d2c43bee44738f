"""BertConfig: the hyper-parameters of a BERT encoder, and BERT's named sizes."""

import dataclasses
from typing import Any

import jax.numpy as jnp

from lmjax.errors import ConfigError

# Activation-checkpointing policies for `nn.remat`, by name. `None` keeps every
# activation (no remat); 'full' keeps only each layer's input.
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("xla", "cudnn")
# Feed-forward activations: 'gelu' is BERT's exact erf GELU.
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")

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

  def __post_init__(self):
    positive = ("vocab_size", "hidden_size", "num_layers", "num_heads",
                "intermediate_size", "max_position", "type_vocab_size")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if self.hidden_size % self.num_heads:
      raise ConfigError(
          f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
          f"({self.num_heads})")
    for name in ("dropout_rate", "attention_dropout_rate"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    for name in ("layer_norm_eps", "initializer_range"):
      if not getattr(self, name) > 0:
        raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
    _check_choice("hidden_act", self.hidden_act, ACTIVATIONS)
    _check_choice("remat_policy", self.remat_policy, REMAT_POLICIES)
    _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    for name in ("dtype", "param_dtype"):
      value = getattr(self, name)
      try:
        ok = jnp.issubdtype(jnp.dtype(value), jnp.floating)
      except TypeError:
        ok = False
      if not ok:
        raise ConfigError(f"{name} must be a floating dtype name, got {value!r}")
    if self.attention_impl == "cudnn" and self.attention_dropout_rate:
      raise ConfigError(
          "attention_dropout_rate must be 0 with attention_impl='cudnn' "
          "(fused attention has no dropout on its probabilities)")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def named(cls, size: str, **overrides: Any) -> "BertConfig":
    """Returns BERT's config of a named size (tiny .. large), with overrides."""
    _check_choice("size", size, tuple(SIZES))
    layers, hidden = SIZES[size]
    sized = dict(num_layers=layers, hidden_size=hidden, num_heads=hidden // 64,
                 intermediate_size=4 * hidden)
    return cls().replace(**{**sized, **overrides})

  def replace(self, **changes: Any) -> "BertConfig":
    """Returns a copy with `changes` applied (and validated)."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ConfigError(f"BertConfig has no field {sorted(unknown)[0]!r}")
    return dataclasses.replace(self, **changes)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
