"""The pieces of a BERT encoder layer: embeddings, attention, feed-forward.

Every parameter carries logical axis names (`lmjax.parallel` maps them to mesh
axes) and so do the main activations, through `nn.with_logical_constraint`.
Shapes in names: B batch, L length, D hidden, N heads, H head width, F
feed-forward width, V vocabulary.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.config import ACTIVATIONS, BertConfig
from lmjax.model.rows import Tokens


def kernel_init(config: BertConfig, axes: tuple) -> nn.initializers.Initializer:
  """BERT's truncated-normal initializer, annotated with logical axes."""
  init = nn.initializers.truncated_normal(config.initializer_range)
  return nn.with_logical_partitioning(init, axes)


def zeros_init(axes: tuple) -> nn.initializers.Initializer:
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


# The collection a model sows its internals into (attention probabilities,
# each layer's output) when it is mutable, as `lmjax.model.internals` asks.
INTERNALS = "intermediates"


def records_internals(module: nn.Module) -> bool:
  """Whether `module`'s caller asked for its internals: a Python bool,
  false in training and evaluation, where sowing is then free."""
  return module.is_mutable_collection(INTERNALS)


def dense(config: BertConfig, features: int, axes: tuple, name: str) -> nn.Dense:
  """A Dense layer with BERT's initializer; `axes` names (in, out)."""
  return nn.Dense(
      features, dtype=config.dtype, param_dtype=config.param_dtype,
      kernel_init=kernel_init(config, axes), bias_init=zeros_init(axes[1:]),
      name=name)


def layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
  # Two-pass variance (use_fast_variance=False) matches torch's LayerNorm.
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps, use_fast_variance=False,
      dtype=config.dtype, param_dtype=config.param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=zeros_init(("embed",)), name=name)


def keep_mask(seed, shape: tuple[int, ...], keep: float, indices=None) -> jax.Array:
  """A boolean mask, true with probability `keep`, hashed from `seed` and an
  element's indices (murmur3's finalizer, chained over them). By default
  those are its index along every axis, so element (i, j, ...) has the
  same value whatever the array's shape: a batch padded less keeps the
  masks of its tokens. `indices`, integer arrays broadcastable to `shape`,
  replace them: a packed row keys a token by (example, position in the
  example), which gives it the mask it has in a row of its own. It costs a
  few integer operations an element."""
  if indices is None:
    indices = [jax.lax.broadcasted_iota(
        jnp.uint32, [size if i == axis else 1 for i in range(len(shape))], axis)
               for axis, size in enumerate(shape)]
  h = seed.astype(jnp.uint32)
  for index in indices:
    index = jnp.asarray(index).astype(jnp.uint32)
    h = _mix(h ^ (index * jnp.uint32(0x9E3779B9) + jnp.uint32(0x7F4A7C15)))
  return jnp.broadcast_to(h, shape) < jnp.uint32(min(int(keep * 2**32), 2**32 - 1))


def _mix(h):
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


class Dropout(nn.Module):
  """Inverted dropout with `keep_mask`'s masks: the same distribution as
  flax's, independent of padding, and about 20 times cheaper to draw on a
  CPU than threefry bits."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool, indices=None):
    """`indices`: what keys each element's mask (see `keep_mask`)."""
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)
    return jnp.where(keep_mask(seed, x.shape, keep, indices),
                     x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class Embeddings(nn.Module):
  """Word + position + segment embeddings, then LayerNorm and dropout."""

  config: BertConfig

  def setup(self):
    cfg = self.config

    def embed(num, axes):
      return nn.Embed(num, cfg.hidden_size, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype,
                      embedding_init=kernel_init(cfg, axes))

    self.word_embeddings = embed(cfg.vocab_size, ("vocab", "embed"))
    self.position_embeddings = embed(cfg.max_position, (None, "embed"))
    self.token_type_embeddings = embed(cfg.type_vocab_size, (None, "embed"))
    self.layer_norm = layer_norm(cfg, "layer_norm")
    self.dropout = Dropout(cfg.dropout_rate)

  def __call__(self, input_ids_BxL, segment_ids_BxL, deterministic: bool,
               tokens: Tokens | None = None):
    """Returns the embedded sequence [B, L, D]; packed rows (`tokens`) take
    each token's position in its own example."""
    length = input_ids_BxL.shape[1]
    if length > self.config.max_position:
      raise ValueError(f"sequence length {length} exceeds max_position "
                       f"{self.config.max_position}")
    x_BxLxD = (_lookup(self.word_embeddings, input_ids_BxL)
               + _lookup(self.token_type_embeddings, segment_ids_BxL))
    if tokens is not None and tokens.packed:
      x_BxLxD = x_BxLxD + _lookup(self.position_embeddings, tokens.position)
    else:
      positions_LxD = self.position_embeddings.embedding[:length]
      x_BxLxD = x_BxLxD + positions_LxD.astype(self.config.dtype)[None]
    keys = None if tokens is None else tokens.token_keys(x_BxLxD.shape[-1])
    x_BxLxD = self.dropout(self.layer_norm(x_BxLxD), deterministic, keys)
    self.sow(INTERNALS, "hidden_states", x_BxLxD)
    return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))

  def word_embedding_table(self) -> jax.Array:
    """The [V, D] word-embedding table, which the MLM decoder shares."""
    return self.word_embeddings.embedding


class HeadProjection(nn.Module):
  """An affine map whose kernel keeps the heads as their own axis.

  The kernel is `kernel_shape`, of which the first `contract` axes meet the
  last axes of the input; the bias has the remaining axes. ('embed', 'heads',
  'kv') projects [B, L, D] to [B, L, N, H]; ('heads', 'kv', 'embed') back.
  """

  config: BertConfig
  kernel_shape: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  contract: int

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kernel = self.param("kernel", kernel_init(cfg, self.kernel_axes),
                        self.kernel_shape, cfg.param_dtype)
    bias = self.param("bias", zeros_init(self.kernel_axes[self.contract:]),
                      self.kernel_shape[self.contract:], cfg.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=cfg.dtype)
    contract_x = tuple(range(x.ndim - self.contract, x.ndim))
    y = jax.lax.dot_general(
        x, kernel, ((contract_x, tuple(range(self.contract))), ((), ())))
    return y + bias


def _lookup(embed: nn.Embed, ids_BxL):
  """Rows of an embedding table, gathered from a table whose `embed` axis is
  first made whole (as FSDP does for every weight before use), so that the
  result can be split by batch without an all-to-all."""
  table_VxD = nn.with_logical_constraint(embed.embedding, ("vocab", None))
  x_BxLxD = jnp.take(table_VxD, ids_BxL, axis=0).astype(embed.dtype)
  return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))


class MultiHeadAttention(nn.Module):
  """Bidirectional self-attention over the unpadded positions (of a
  token's own example, in packed rows)."""

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD, tokens: Tokens | jax.Array, deterministic: bool):
    """Returns the attention output [B, L, D]; `tokens` is their layout, or
    a mask [B, L] that is 1 on real tokens."""
    cfg = self.config
    tokens = tokens if isinstance(tokens, Tokens) else Tokens.of(tokens)

    def project(name):
      return HeadProjection(cfg, (cfg.hidden_size, cfg.num_heads, cfg.head_dim),
                            ("embed", "heads", "kv"), contract=1, name=name)

    axes = ("batch", "length", "heads", "kv")
    q_BxLxNxH = nn.with_logical_constraint(project("query")(x_BxLxD), axes)
    k_BxLxNxH = nn.with_logical_constraint(project("key")(x_BxLxD), axes)
    v_BxLxNxH = nn.with_logical_constraint(project("value")(x_BxLxD), axes)
    mask_Bx1xQxL = tokens.attention_mask()  # Q: 1 unpacked, L packed

    if records_internals(self):
      # Asked for the probabilities (`lmjax.model.internals`): computed
      # explicitly, whatever the configured implementation.
      probs_BxNxLxL = attention_probs(q_BxLxNxH, k_BxLxNxH, mask_Bx1xQxL)
      self.sow(INTERNALS, "attention_probs", probs_BxNxLxL)
      probs_BxNxLxL = Dropout(cfg.attention_dropout_rate)(
          probs_BxNxLxL, deterministic, tokens.attention_keys(cfg.num_heads))
      out_BxLxNxH = jnp.einsum("bnqk,bknh->bqnh", probs_BxNxLxL, v_BxLxNxH)
    elif cfg.attention_impl == "cudnn" and not tokens.packed:
      # cuDNN's fused kernel takes padding as key lengths (real tokens first,
      # as in every lmjax batch), not as a broadcast mask.
      out_BxLxNxH = jax.nn.dot_product_attention(
          q_BxLxNxH, k_BxLxNxH, v_BxLxNxH,
          key_value_seq_lengths=tokens.mask.sum(-1).astype(jnp.int32),
          implementation="cudnn")
    elif cfg.attention_impl == "cudnn":
      # Packed rows: jax's cuDNN attention takes the block-diagonal mask
      # (as a bias of the fused kernel).
      out_BxLxNxH = jax.nn.dot_product_attention(
          q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask=mask_Bx1xQxL, implementation="cudnn")
    elif (deterministic or cfg.attention_dropout_rate == 0.0) and (
        jnp.dtype(cfg.dtype) != jnp.float64):
      out_BxLxNxH = jax.nn.dot_product_attention(
          q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask=mask_Bx1xQxL,
          implementation="xla")
    else:
      # Explicit attention: for dropout on the probabilities, and in float64,
      # where the fused function would still round its softmax to float32.
      probs_BxNxLxL = attention_probs(q_BxLxNxH, k_BxLxNxH, mask_Bx1xQxL)
      probs_BxNxLxL = Dropout(cfg.attention_dropout_rate)(
          probs_BxNxLxL, deterministic, tokens.attention_keys(cfg.num_heads))
      out_BxLxNxH = jnp.einsum("bnqk,bknh->bqnh", probs_BxNxLxL, v_BxLxNxH)
    out_BxLxNxH = nn.with_logical_constraint(out_BxLxNxH, axes)

    return HeadProjection(cfg, (cfg.num_heads, cfg.head_dim, cfg.hidden_size),
                          ("heads", "kv", "embed"), contract=2,
                          name="out")(out_BxLxNxH)


def attention_probs(q_BxLxNxH, k_BxLxNxH, mask_Bx1xQxL):
  """Softmax attention weights [B, N, L, L], computed in at least float32;
  the mask broadcasts over heads (and queries, when Q is 1)."""
  scale = q_BxLxNxH.shape[-1] ** -0.5
  dtype = logits_dtype(q_BxLxNxH.dtype)
  logits_BxNxLxL = jnp.einsum("bqnh,bknh->bnqk", q_BxLxNxH, k_BxLxNxH)
  logits_BxNxLxL = logits_BxNxLxL.astype(dtype) * scale
  logits_BxNxLxL = jnp.where(mask_Bx1xQxL, logits_BxNxLxL, jnp.finfo(dtype).min)
  return jax.nn.softmax(logits_BxNxLxL, axis=-1).astype(q_BxLxNxH.dtype)


def logits_dtype(dtype) -> jnp.dtype:
  """float32 for bfloat16/float16/float32 computation, float64 for float64."""
  return jnp.promote_types(dtype, jnp.float32)


class FeedForward(nn.Module):
  """Position-wise two-layer MLP with BERT's activation."""

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD):
    cfg = self.config
    h_BxLxF = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "wi")(x_BxLxD)
    h_BxLxF = ACTIVATIONS[cfg.hidden_act](h_BxLxF)
    h_BxLxF = nn.with_logical_constraint(h_BxLxF, ("batch", "length", "mlp"))
    return dense(cfg, cfg.hidden_size, ("mlp", "embed"), "wo")(h_BxLxF)


class EncoderLayer(nn.Module):
  """One post-LayerNorm transformer layer, as in BERT."""

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD, tokens: Tokens | jax.Array, deterministic: bool):
    """`tokens`: their layout, or a mask [B, L] that is 1 on real tokens."""
    cfg = self.config
    tokens = tokens if isinstance(tokens, Tokens) else Tokens.of(tokens)
    dropout = Dropout(cfg.dropout_rate)
    keys = tokens.token_keys(cfg.hidden_size)
    y_BxLxD = MultiHeadAttention(cfg, name="attention")(x_BxLxD, tokens, deterministic)
    y_BxLxD = dropout(y_BxLxD, deterministic, keys)
    x_BxLxD = layer_norm(cfg, "attention_norm")(x_BxLxD + y_BxLxD)
    y_BxLxD = FeedForward(cfg, name="mlp")(x_BxLxD)
    y_BxLxD = dropout(y_BxLxD, deterministic, keys)
    x_BxLxD = layer_norm(cfg, "mlp_norm")(x_BxLxD + y_BxLxD)
    self.sow(INTERNALS, "hidden_states", x_BxLxD)
    return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))
