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


def kernel_init(config: BertConfig, axes: tuple) -> nn.initializers.Initializer:
  """BERT's truncated-normal initializer, annotated with logical axes."""
  init = nn.initializers.truncated_normal(config.initializer_range)
  return nn.with_logical_partitioning(init, axes)


def zeros_init(axes: tuple) -> nn.initializers.Initializer:
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


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


def keep_mask(seed, shape: tuple[int, ...], keep: float) -> jax.Array:
  """A boolean mask, true with probability `keep`, hashed from `seed` and each
  element's index along every axis (murmur3's finalizer, chained over the
  axes). Element (i, j, ...) has the same value whatever the array's shape,
  so a batch padded less keeps the masks of its tokens; it costs a few
  integer operations an element."""
  h = seed.astype(jnp.uint32)
  for axis, size in enumerate(shape):
    index = jax.lax.broadcasted_iota(
        jnp.uint32, [size if i == axis else 1 for i in range(len(shape))], axis)
    h = _mix(h ^ (index * jnp.uint32(0x9E3779B9) + jnp.uint32(0x7F4A7C15)))
  return h < jnp.uint32(min(int(keep * 2**32), 2**32 - 1))


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
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    seed = jax.random.bits(self.make_rng("dropout"), (), jnp.uint32)
    return jnp.where(keep_mask(seed, x.shape, keep), x / jnp.asarray(keep, x.dtype),
                     jnp.zeros((), x.dtype))


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

  def __call__(self, input_ids_BxL, segment_ids_BxL, deterministic: bool):
    """Returns the embedded sequence [B, L, D]."""
    length = input_ids_BxL.shape[1]
    if length > self.config.max_position:
      raise ValueError(f"sequence length {length} exceeds max_position "
                       f"{self.config.max_position}")
    x_BxLxD = (_lookup(self.word_embeddings, input_ids_BxL)
               + _lookup(self.token_type_embeddings, segment_ids_BxL))
    positions_LxD = self.position_embeddings.embedding[:length]
    x_BxLxD = x_BxLxD + positions_LxD.astype(self.config.dtype)[None]
    x_BxLxD = self.dropout(self.layer_norm(x_BxLxD), deterministic=deterministic)
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
  """Bidirectional self-attention over the unpadded positions."""

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD, mask_BxL, deterministic: bool):
    """Returns the attention output [B, L, D]; `mask_BxL` is 1 on real tokens."""
    cfg = self.config

    def project(name):
      return HeadProjection(cfg, (cfg.hidden_size, cfg.num_heads, cfg.head_dim),
                            ("embed", "heads", "kv"), contract=1, name=name)

    axes = ("batch", "length", "heads", "kv")
    q_BxLxNxH = nn.with_logical_constraint(project("query")(x_BxLxD), axes)
    k_BxLxNxH = nn.with_logical_constraint(project("key")(x_BxLxD), axes)
    v_BxLxNxH = nn.with_logical_constraint(project("value")(x_BxLxD), axes)
    mask_Bx1x1xL = mask_BxL[:, None, None, :].astype(bool)

    if cfg.attention_impl == "cudnn":
      # cuDNN's fused kernel takes padding as key lengths (real tokens first,
      # as in every lmjax batch), not as a broadcast mask.
      out_BxLxNxH = jax.nn.dot_product_attention(
          q_BxLxNxH, k_BxLxNxH, v_BxLxNxH,
          key_value_seq_lengths=mask_BxL.sum(-1).astype(jnp.int32),
          implementation="cudnn")
    elif (deterministic or cfg.attention_dropout_rate == 0.0) and (
        jnp.dtype(cfg.dtype) != jnp.float64):
      out_BxLxNxH = jax.nn.dot_product_attention(
          q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask=mask_Bx1x1xL,
          implementation="xla")
    else:
      # Explicit attention: for dropout on the probabilities, and in float64,
      # where the fused function would still round its softmax to float32.
      probs_BxNxLxL = attention_probs(q_BxLxNxH, k_BxLxNxH, mask_Bx1x1xL)
      probs_BxNxLxL = Dropout(cfg.attention_dropout_rate)(
          probs_BxNxLxL, deterministic=deterministic)
      out_BxLxNxH = jnp.einsum("bnqk,bknh->bqnh", probs_BxNxLxL, v_BxLxNxH)
    out_BxLxNxH = nn.with_logical_constraint(out_BxLxNxH, axes)

    return HeadProjection(cfg, (cfg.num_heads, cfg.head_dim, cfg.hidden_size),
                          ("heads", "kv", "embed"), contract=2,
                          name="out")(out_BxLxNxH)


def attention_probs(q_BxLxNxH, k_BxLxNxH, mask_Bx1x1xL):
  """Softmax attention weights [B, N, L, L], computed in at least float32."""
  scale = q_BxLxNxH.shape[-1] ** -0.5
  dtype = logits_dtype(q_BxLxNxH.dtype)
  logits_BxNxLxL = jnp.einsum("bqnh,bknh->bnqk", q_BxLxNxH, k_BxLxNxH)
  logits_BxNxLxL = logits_BxNxLxL.astype(dtype) * scale
  logits_BxNxLxL = jnp.where(mask_Bx1x1xL, logits_BxNxLxL, jnp.finfo(dtype).min)
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
  def __call__(self, x_BxLxD, mask_BxL, deterministic: bool):
    cfg = self.config
    dropout = Dropout(cfg.dropout_rate)
    y_BxLxD = MultiHeadAttention(cfg, name="attention")(x_BxLxD, mask_BxL,
                                                        deterministic)
    y_BxLxD = dropout(y_BxLxD, deterministic=deterministic)
    x_BxLxD = layer_norm(cfg, "attention_norm")(x_BxLxD + y_BxLxD)
    y_BxLxD = FeedForward(cfg, name="mlp")(x_BxLxD)
    y_BxLxD = dropout(y_BxLxD, deterministic=deterministic)
    x_BxLxD = layer_norm(cfg, "mlp_norm")(x_BxLxD + y_BxLxD)
    return nn.with_logical_constraint(x_BxLxD, ("batch", "length", "embed"))
