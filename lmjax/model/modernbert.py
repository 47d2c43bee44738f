"""ModernBERT (Warner et al., 2024) as Flax linen modules: its config and
named sizes, the encoder and its MLM and classification heads. Pure: no I/O.

What differs from BERT: pre-LayerNorm layers without biases (the first
layer's attention reads the normed embeddings directly), one fused
query-key-value projection, rotary position embeddings (one base for global
layers, another for local ones) instead of a position table, no segment
embeddings, sliding-window attention (a token sees those within
`local_window / 2` positions) in every layer but each `global_every`-th,
which attends globally, a GeGLU feed-forward, a final norm, and heads of
dense + activation + norm (the MLM decoder tied to the embeddings).

Layers scan as BERT's do: the layer kind is a scanned input (which mask and
which rotary table a layer takes), so any pattern of global and local layers
survives scanning. Every layer holds an `attention_norm`; the first layer's
is not applied (transformers' has none: import writes ones, export drops it).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.errors import ConfigError
from lmjax.model.config import ACTIVATIONS, ATTENTION_IMPLS, REMAT_POLICIES, check_dtypes
from lmjax.model.encoder import rematted
from lmjax.model.layers import (INTERNALS, Dropout, attention_probs, logits_dtype,
                                records_internals)
from lmjax.model.rows import Tokens, at_starts, example_keys, mean_over_examples

# (num_layers, hidden_size, num_heads, intermediate_size) of the released
# sizes (answerdotai/ModernBERT-base and -large), and a small one for CPUs.
SIZES = {
    "tiny": (3, 128, 2, 192),
    "base": (22, 768, 12, 1152),
    "large": (28, 1024, 16, 2624),
}
POOLING = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
  """Hyper-parameters of a ModernBERT encoder; the defaults are base's."""

  vocab_size: int = 50368
  hidden_size: int = 768  # D
  num_layers: int = 22
  num_heads: int = 12  # N; head width D / N
  intermediate_size: int = 1152  # F: the GeGLU's width (its input projection is 2F)
  max_position: int = 8192  # longest sequence it was trained for
  local_window: int = 128  # local layers: a token sees positions within half of it
  global_every: int = 3  # layer i is global when i % global_every == 0
  global_rope_theta: float = 160_000.0
  local_rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  initializer_range: float = 0.02
  initializer_cutoff: float = 2.0  # weights are normal within this many stddevs
  hidden_act: str = "gelu"
  head_act: str = "gelu"  # the heads' dense + activation + norm
  classifier_pooling: str = "cls"  # cls | mean (over each example's real tokens)
  decoder_bias: bool = True
  embedding_dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0  # on the probabilities and the output
  mlp_dropout_rate: float = 0.0
  classifier_dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: str = "xla"

  def __post_init__(self):
    check_values(dataclasses.asdict(self))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def is_global(self, layer: int) -> bool:
    return layer % self.global_every == 0

  @classmethod
  def named(cls, size: str, **overrides: Any) -> "ModernBertConfig":
    if size not in SIZES:
      raise ConfigError(f"size must be one of {', '.join(SIZES)}; got {size!r}")
    layers, hidden, heads, width = SIZES[size]
    return cls().replace(**{**dict(num_layers=layers, hidden_size=hidden, num_heads=heads,
                                   intermediate_size=width), **overrides})

  def replace(self, **changes: Any) -> "ModernBertConfig":
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ConfigError(f"ModernBertConfig has no field {sorted(unknown)[0]!r}")
    return dataclasses.replace(self, **changes)


def check_values(v: Mapping[str, Any], prefix: str = "") -> None:
  """Raises ConfigError naming (after `prefix`) the first field of `v`
  (every ModernBertConfig field) with an impossible value."""
  for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
               "max_position", "local_window", "global_every"):
    value = v[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f"{prefix}{name} must be a positive integer, got {value!r}")
  if v["hidden_size"] % v["num_heads"] or (v["hidden_size"] // v["num_heads"]) % 2:
    raise ConfigError(f"{prefix}hidden_size ({v['hidden_size']}) must be divisible by num_heads "
                      f"({v['num_heads']}) into heads of an even width (rotary embeddings)")
  if v["local_window"] % 2:
    raise ConfigError(f"{prefix}local_window must be even (a token sees half of it on each side), "
                      f"got {v['local_window']}")
  for name in ("embedding_dropout_rate", "attention_dropout_rate", "mlp_dropout_rate",
               "classifier_dropout_rate"):
    if not 0.0 <= v[name] < 1.0:
      raise ConfigError(f"{prefix}{name} must be in [0, 1), got {v[name]!r}")
  for name in ("norm_eps", "initializer_range", "initializer_cutoff", "global_rope_theta",
               "local_rope_theta"):
    if not v[name] > 0:
      raise ConfigError(f"{prefix}{name} must be positive, got {v[name]!r}")
  for name, choices in (("hidden_act", tuple(ACTIVATIONS)), ("head_act", tuple(ACTIVATIONS)),
                        ("classifier_pooling", POOLING), ("remat_policy", tuple(REMAT_POLICIES)),
                        ("attention_impl", ATTENTION_IMPLS)):
    if v[name] not in choices:
      raise ConfigError(f"{prefix}{name} must be one of {', '.join(choices)}; got {v[name]!r}")
  if v["attention_impl"] == "cudnn" and v["attention_dropout_rate"]:
    raise ConfigError(f"{prefix}attention_dropout_rate must be 0 with attention_impl='cudnn'")
  check_dtypes(v, prefix)


def _init(cfg: ModernBertConfig, std: float, axes: tuple) -> nn.initializers.Initializer:
  """Normal(0, std) cut at `initializer_cutoff` stddevs, as ModernBERT's."""
  cutoff = cfg.initializer_cutoff

  def init(key, shape, dtype=jnp.float32):
    return jax.random.truncated_normal(key, -cutoff, cutoff, shape, dtype) * std

  return nn.with_logical_partitioning(init, axes)


def _out_std(cfg: ModernBertConfig) -> float:
  """Projections into the residual stream start smaller with depth."""
  return cfg.initializer_range / (2.0 * cfg.num_layers) ** 0.5


def _norm(cfg: ModernBertConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.norm_eps, use_bias=False, use_fast_variance=False, dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      name=name)


def _project(cfg, x, shape, axes, contract, std, name, module):
  """x's last `contract` axes against a bias-free kernel of `shape`."""
  kernel = module.param(name, _init(cfg, std, axes), shape, cfg.param_dtype)
  x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=cfg.dtype)
  dims = tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract))
  return jax.lax.dot_general(x, kernel, (dims, ((), ())))


def rotary_tables(position_BxL, head_dim: int, theta: float):
  """cos and sin [B, L, H] of each token's position: frequencies
  theta^(-2i/H) for i < H/2, each used for dimension i and i + H/2."""
  inv_freq_H2 = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles_BxLxH2 = position_BxL[..., None].astype(jnp.float32) * inv_freq_H2
  angles_BxLxH = jnp.concatenate([angles_BxLxH2, angles_BxLxH2], axis=-1)
  return jnp.cos(angles_BxLxH), jnp.sin(angles_BxLxH)


def rotate(x_BxLxNxH, cos_BxLxH, sin_BxLxH):
  """Rotary embedding of queries or keys, in float32: each pair (i, i + H/2)
  turned by its angle."""
  x = x_BxLxNxH.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x * cos_BxLxH[:, :, None] + rotated * sin_BxLxH[:, :, None]
  return out.astype(x_BxLxNxH.dtype)


def local_mask(tokens: Tokens, window: int) -> jax.Array:
  """[B, 1, L, L]: `tokens.attention_mask()` and within window / 2 positions
  (of a token's own example, in packed rows)."""
  position = jnp.broadcast_to(tokens.position, tokens.mask.shape)
  near_BxLxL = jnp.abs(position[:, :, None] - position[:, None, :]) <= window // 2
  return tokens.attention_mask() & near_BxLxL[:, None]


class Attention(nn.Module):
  """Self-attention with rotary queries and keys, under a given mask."""

  config: ModernBertConfig

  @nn.compact
  def __call__(self, x_BxLxD, mask_Bx1xQxL, cos_BxLxH, sin_BxLxH, tokens: Tokens,
               deterministic: bool):
    cfg = self.config
    n, h, d = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    axes = ("batch", "length", "heads", "kv")
    qkv_BxLx3xNxH = _project(cfg, x_BxLxD, (d, 3, n, h), ("embed", None, "heads", "kv"), 1,
                             cfg.initializer_range, "qkv", self)
    q, k, v = (nn.with_logical_constraint(qkv_BxLx3xNxH[:, :, i], axes) for i in range(3))
    q, k = rotate(q, cos_BxLxH, sin_BxLxH), rotate(k, cos_BxLxH, sin_BxLxH)
    rate = cfg.attention_dropout_rate
    if records_internals(self):
      probs_BxNxLxL = attention_probs(q, k, mask_Bx1xQxL)
      self.sow(INTERNALS, "attention_probs", probs_BxNxLxL)
      probs_BxNxLxL = Dropout(rate)(probs_BxNxLxL, deterministic, tokens.attention_keys(n))
      out_BxLxNxH = jnp.einsum("bnqk,bknh->bqnh", probs_BxNxLxL, v)
    elif cfg.attention_impl == "cudnn" or deterministic or rate == 0.0:
      out_BxLxNxH = jax.nn.dot_product_attention(
          q, k, v, mask=mask_Bx1xQxL, implementation=cfg.attention_impl)
    else:
      probs_BxNxLxL = attention_probs(q, k, mask_Bx1xQxL)
      probs_BxNxLxL = Dropout(rate)(probs_BxNxLxL, deterministic, tokens.attention_keys(n))
      out_BxLxNxH = jnp.einsum("bnqk,bknh->bqnh", probs_BxNxLxL, v)
    out_BxLxNxH = nn.with_logical_constraint(out_BxLxNxH, axes)
    y_BxLxD = _project(cfg, out_BxLxNxH, (n, h, d), ("heads", "kv", "embed"), 2,
                       _out_std(cfg), "out", self)
    return Dropout(rate)(y_BxLxD, deterministic, tokens.token_keys(d))


class GatedFeedForward(nn.Module):
  """GeGLU: act(x W_in) * (x W_gate), then W_out; no biases."""

  config: ModernBertConfig

  @nn.compact
  def __call__(self, x_BxLxD, tokens: Tokens, deterministic: bool):
    cfg = self.config
    f, d = cfg.intermediate_size, cfg.hidden_size
    h_BxLx2xF = _project(cfg, x_BxLxD, (d, 2, f), ("embed", None, "mlp"), 1,
                         cfg.initializer_range, "wi", self)
    h_BxLxF = ACTIVATIONS[cfg.hidden_act](h_BxLx2xF[:, :, 0]) * h_BxLx2xF[:, :, 1]
    h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "mlp"))
    h_BxLxF = Dropout(cfg.mlp_dropout_rate)(h_BxLxF, deterministic, tokens.token_keys(f))
    return _project(cfg, h_BxLxF, (f, d), ("mlp", "embed"), 1, _out_std(cfg), "wo", self)


class Layer(nn.Module):
  """One pre-LayerNorm layer. `kind` [2] int32: (global?, first layer?),
  traced, so that one scanned body serves every layer."""

  config: ModernBertConfig

  @nn.compact
  def __call__(self, x_BxLxD, kind, masks, tables, tokens: Tokens, deterministic: bool):
    cfg = self.config
    is_global, is_first = kind[0] > 0, kind[1] > 0
    mask = jnp.where(is_global, masks[0], masks[1])
    cos, sin = (jnp.where(is_global, g, loc) for g, loc in zip(*tables, strict=True))
    normed_BxLxD = jnp.where(is_first, x_BxLxD, _norm(cfg, "attention_norm")(x_BxLxD))
    x_BxLxD = x_BxLxD + Attention(cfg, name="attention")(normed_BxLxD, mask, cos, sin,
                                                         tokens, deterministic)
    x_BxLxD = x_BxLxD + GatedFeedForward(cfg, name="mlp")(
        _norm(cfg, "mlp_norm")(x_BxLxD), tokens, deterministic)
    self.sow(INTERNALS, "hidden_states", x_BxLxD)
    return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))


def _layer_step(layer, x_BxLxD, kind, masks, tables, tokens, deterministic):
  return layer(x_BxLxD, kind, masks, tables, tokens, deterministic), None


class ModernBertModel(nn.Module):
  """Embeddings -> layers -> final norm: the sequence output [B, L, D].
  Packed rows (lmjax.model.rows) add `positions` and `example_index`."""

  config: ModernBertConfig
  INPUTS = ("input_ids", "input_mask")

  def setup(self):
    cfg = self.config
    self.embeddings = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
                               param_dtype=cfg.param_dtype,
                               embedding_init=_init(cfg, cfg.initializer_range,
                                                    ("vocab", "embed")))
    self.embedding_norm = _norm(cfg, "embedding_norm")
    self.embedding_dropout = Dropout(cfg.embedding_dropout_rate)
    self.encoder = _Layers(cfg)
    self.final_norm = _norm(cfg, "final_norm")

  def __call__(self, input_ids_BxL, input_mask_BxL, deterministic: bool = True,
               positions=None, example_index=None):
    cfg = self.config
    tokens = Tokens.of(input_mask_BxL, positions, example_index)
    table_VxD = nn.with_logical_constraint(self.embeddings.embedding, ("vocab", None))
    x_BxLxD = jnp.take(table_VxD, input_ids_BxL, axis=0).astype(cfg.dtype)
    x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))
    x_BxLxD = self.embedding_dropout(self.embedding_norm(x_BxLxD), deterministic,
                                     tokens.token_keys(cfg.hidden_size))
    self.sow(INTERNALS, "hidden_states", x_BxLxD)
    position_BxL = jnp.broadcast_to(tokens.position, input_mask_BxL.shape)
    masks = (tokens.attention_mask(), local_mask(tokens, cfg.local_window))
    tables = (rotary_tables(position_BxL, cfg.head_dim, cfg.global_rope_theta),
              rotary_tables(position_BxL, cfg.head_dim, cfg.local_rope_theta))
    kinds = jnp.array([[cfg.is_global(i), i == 0] for i in range(cfg.num_layers)], jnp.int32)
    x_BxLxD = self.encoder(x_BxLxD, kinds, masks, tables, tokens, deterministic)
    return self.final_norm(x_BxLxD)

  def word_embedding_table(self) -> jax.Array:
    return self.embeddings.embedding


class _Layers(nn.Module):
  """The layers, as a Python loop (`layers_0 ..`) or one nn.scan (`layers`)."""

  config: ModernBertConfig

  @nn.compact
  def __call__(self, x_BxLxD, kinds, masks, tables, tokens, deterministic):
    cfg = self.config
    layer_cls = rematted(Layer, cfg, deterministic_argnum=6)
    if not cfg.scan_layers:
      for i in range(cfg.num_layers):
        x_BxLxD = layer_cls(cfg, name=f"layers_{i}")(x_BxLxD, kinds[i], masks, tables,
                                                      tokens, deterministic)
      return x_BxLxD
    scan = nn.scan(
        _layer_step, variable_axes={"params": 0, INTERNALS: 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    x_BxLxD, _ = scan(layer_cls(cfg, name="layers"), x_BxLxD, kinds, masks, tables, tokens,
                      deterministic)
    return x_BxLxD


class Head(nn.Module):
  """Dense (no bias) + activation + norm, before the MLM decoder or the
  classifier."""

  config: ModernBertConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = _project(cfg, x, (cfg.hidden_size, cfg.hidden_size), ("embed", "mlp"), 1,
                 _out_std(cfg), "dense", self)
    return _norm(cfg, "norm")(ACTIVATIONS[cfg.head_act](h))


class ModernBertForMaskedLM(nn.Module):
  """ModernBERT with its MLM head, run only at `masked_positions` [B, P];
  the decoder is the embedding table (and a bias). It has no NSP head and
  no pooled output: it pretrains with MLM alone."""

  config: ModernBertConfig
  INPUTS = ("input_ids", "input_mask")  # no segment ids

  def setup(self):
    cfg = self.config
    self.model = ModernBertModel(cfg)
    self.head = Head(cfg)
    if cfg.decoder_bias:
      self.output_bias = self.param("output_bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), ("vocab",)), (cfg.vocab_size,), cfg.param_dtype)

  def __call__(self, input_ids, input_mask, masked_positions, deterministic: bool = True,
               positions=None, example_index=None,
               example_starts=None) -> dict[str, jax.Array]:
    """sequence_output [B, L, D] and mlm_logits [B, P, V] (at least float32)."""
    del example_starts  # no per-example output
    cfg = self.config
    seq_BxLxD = self.model(input_ids, input_mask, deterministic, positions, example_index)
    at_BxPxD = jnp.take_along_axis(seq_BxLxD, masked_positions[..., None], axis=1)
    h_BxPxD = nn.with_logical_constraint(self.head(at_BxPxD), ("batch", "length", "embed"))
    out_dtype = logits_dtype(cfg.dtype)
    logits_BxPxV = jnp.einsum("bpd,vd->bpv", h_BxPxD,
                              self.model.word_embedding_table().astype(h_BxPxD.dtype),
                              preferred_element_type=out_dtype)
    if cfg.decoder_bias:
      logits_BxPxV = logits_BxPxV + self.output_bias.astype(out_dtype)
    return dict(sequence_output=seq_BxLxD, mlm_logits=nn.with_logical_constraint(
        logits_BxPxV, ("batch", "length", "vocab")))

  def mean_pooled(self, input_ids, input_mask, positions=None, example_index=None,
                  example_starts=None) -> jax.Array:
    """The final norm's output averaged over each example's real tokens,
    [B, D] (or [B, E, D] packed), float32, no dropout: a linear probe's
    features."""
    seq_BxLxD = self.model(input_ids, input_mask, True, positions, example_index)
    return mean_over_examples(seq_BxLxD.astype(jnp.float32), input_mask, example_index,
                              example_starts)


class ModernBertForSequenceClassification(nn.Module):
  """ModernBERT pooled at [CLS] or by the mean over each example's real
  tokens (`classifier_pooling`), then the head and a linear classifier.
  Packed rows give logits per example, [B, E, num_labels]."""

  config: ModernBertConfig
  num_labels: int
  INPUTS = ("input_ids", "input_mask")

  @nn.compact
  def __call__(self, input_ids, input_mask, deterministic: bool = True, positions=None,
               example_index=None, example_starts=None) -> jax.Array:
    cfg = self.config
    model = ModernBertModel(cfg, name="model")
    seq_BxLxD = model(input_ids, input_mask, deterministic, positions, example_index)
    if cfg.classifier_pooling == "cls":
      pooled = at_starts(seq_BxLxD, example_starts)
    else:
      pooled = mean_over_examples(seq_BxLxD, input_mask, example_index, example_starts)
    pooled = Head(cfg, name="head")(pooled)
    keys = example_keys(Tokens.of(input_mask, positions, example_index), example_starts,
                        cfg.hidden_size)
    pooled = Dropout(cfg.classifier_dropout_rate)(pooled, deterministic, keys)
    logits = nn.Dense(self.num_labels, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype,
                      kernel_init=_init(cfg, cfg.hidden_size ** -0.5, ("embed", None)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             (None,)),
                      name="classifier")(pooled)
    return logits.astype(logits_dtype(cfg.dtype))
