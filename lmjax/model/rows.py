"""Where each token of a batch sits: in a row of its own example, or in a
packed row of several.

A packed row holds several examples one after another, each from its own
[CLS], then padding. Three per-token arrays describe it: `input_mask` (1 on
real tokens), `example_index` (which example of the batch the token belongs
to) and `positions` (its position in that example, from 0 at its [CLS]);
`example_starts` [B, E] say where a row's examples begin. Attention stays
inside an example, position embeddings count from each example's start,
pooled outputs are read at each example's [CLS], and dropout keys a token by
(example, position in the example), as a row of one example does: a packed
batch computes what the same examples computed one a row compute, dropout
included.
"""

import flax
import jax
import jax.numpy as jnp

# The inputs of packed rows, None for unpacked ones.
PACKED_INPUTS = ("positions", "example_index", "example_starts")


def inputs_of(model, batch, *extra: str) -> dict:
  """The arrays of `batch` that `model` takes: its `INPUTS` (BERT's
  segment ids, say, which ModernBERT has none of), the packed rows' layout
  where the batch has one, and `extra` (an MLM model's masked_positions)."""
  return {k: batch[k] for k in (*model.INPUTS, *extra, *PACKED_INPUTS) if k in batch}


@flax.struct.dataclass
class Tokens:
  """The layout of a batch's tokens: `mask` [B, L] is 1 on real tokens;
  `example` and `position` (broadcastable to [B, L]) are each token's
  example and its position in it. Unpacked, example is the row and
  position the column."""
  mask: jax.Array
  example: jax.Array
  position: jax.Array
  packed: bool = flax.struct.field(pytree_node=False, default=False)

  @classmethod
  def of(cls, input_mask_BxL, positions_BxL=None, example_index_BxL=None) -> "Tokens":
    """Unpacked rows (only a mask), or packed ones (positions and example
    index too)."""
    if (positions_BxL is None) != (example_index_BxL is None):
      raise ValueError("packed rows need both positions and example_index")
    if positions_BxL is None:
      rows, length = input_mask_BxL.shape
      return cls(input_mask_BxL, jnp.arange(rows, dtype=jnp.int32)[:, None],
                 jnp.arange(length, dtype=jnp.int32)[None])
    return cls(input_mask_BxL, example_index_BxL, positions_BxL, packed=True)

  def attention_mask(self) -> jax.Array:
    """Which keys each query may attend to, [B, 1, 1, L] unpacked (the real
    tokens) or [B, 1, L, L] packed (the real tokens of its own example)."""
    real_Bx1x1xL = self.mask[:, None, None, :].astype(bool)
    if not self.packed:
      return real_Bx1x1xL
    return real_Bx1x1xL & (self.example[:, None, :, None] == self.example[:, None, None, :])

  def token_keys(self, features: int) -> tuple[jax.Array, ...]:
    """What keys the dropout of a [B, L, features] activation: (example,
    position in it, feature)."""
    return (self.example[:, :, None], self.position[:, :, None],
            jnp.arange(features, dtype=jnp.int32)[None, None])

  def attention_keys(self, heads: int) -> tuple[jax.Array, ...]:
    """What keys the dropout of [B, N, L, L] attention probabilities: (the
    query's example, head, query position, key position)."""
    return (self.example[:, None, :, None], jnp.arange(heads, dtype=jnp.int32)[None, :, None, None],
            self.position[:, None, :, None], self.position[:, None, None, :])


def at_starts(x_BxLxD: jax.Array, starts_BxE: jax.Array | None) -> jax.Array:
  """x at each example's first token: [B, D] of position 0 (unpacked), or
  [B, E, D] at `starts_BxE` (packed)."""
  if starts_BxE is None:
    return x_BxLxD[:, 0]
  return jnp.take_along_axis(x_BxLxD, starts_BxE[..., None], axis=1)


def example_keys(tokens: Tokens, starts_BxE: jax.Array | None, features: int):
  """What keys the dropout of a pooled [B, D] or [B, E, D] output: the
  example and the feature (None: an unpacked batch's default, the same)."""
  if starts_BxE is None:
    return None
  example_BxE = jnp.take_along_axis(jnp.broadcast_to(tokens.example, tokens.mask.shape),
                                    starts_BxE, axis=1)
  return example_BxE[..., None], jnp.arange(features, dtype=jnp.int32)[None, None]


def mean_over_examples(seq_BxLxD, input_mask_BxL, example_index_BxL=None,
                       example_starts_BxE=None):
  """The mean of each example's real tokens: [B, D], or [B, E, D] packed."""
  mask_BxL = input_mask_BxL.astype(seq_BxLxD.dtype)
  if example_starts_BxE is None:
    total_BxD = jnp.einsum("bld,bl->bd", seq_BxLxD, mask_BxL)
    return total_BxD / jnp.maximum(mask_BxL.sum(-1, keepdims=True), 1)
  slot_BxE = jnp.take_along_axis(example_index_BxL, example_starts_BxE, 1)
  member_BxExL = (example_index_BxL[:, None, :] == slot_BxE[:, :, None]) & (
      input_mask_BxL[:, None, :] > 0)
  member_BxExL = member_BxExL.astype(seq_BxLxD.dtype)
  total_BxExD = jnp.einsum("bld,bel->bed", seq_BxLxD, member_BxExL)
  return total_BxExD / jnp.maximum(member_BxExL.sum(-1, keepdims=True), 1)
