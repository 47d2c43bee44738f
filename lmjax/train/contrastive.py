"""Contrastive prediction (CP): the two segments of a pretraining pair, each
encoded on its own and pooled, should find each other among all the batch's
segments (in-batch InfoNCE, symmetric, cosine similarity over a temperature).

In evaluation only actual-next pairs are positives. In training a pair
whose B is not A's continuation (every pair of a corpus of one-sentence
documents) gets A itself as its positive, seen through another dropout mask
(as in SimCSE, Gao et al., 2021), so every row of the batch trains CP. Every
B segment of the batch is a negative for the others. The similarity matrix
spans the global batch: under a sharded jit the B segments of every device
meet every A. With gradient accumulation too: the training step embeds
every micro-batch first and takes CP over the whole batch
(lmjax.train.steps.Across).
"""

import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]


def original_ids(batch: Batch) -> jax.Array:
  """The pair's token ids with the masked positions' original tokens back."""
  ids_BxL, positions_BxP = batch["input_ids"], batch["masked_positions"]
  rows_Bx1 = jnp.arange(ids_BxL.shape[0])[:, None]
  kept_BxP = jnp.where(batch["masked_weights"] > 0, batch["masked_ids"],
                       ids_BxL[rows_Bx1, positions_BxP])
  return ids_BxL.at[rows_Bx1, positions_BxP].set(kept_BxP)


def segments(batch: Batch) -> tuple[dict, dict]:
  """The A and B segments of `[CLS] A [SEP] B [SEP]` pairs as sequences of
  their own, `[CLS] A [SEP]` and `[CLS] B [SEP]`, at the pair's length with
  padding after them (model inputs: input_ids, segment_ids, input_mask)."""
  ids_BxL = original_ids(batch)
  mask_BxL, segment_BxL = batch["input_mask"], batch["segment_ids"]
  length = ids_BxL.shape[1]
  a_mask_BxL = mask_BxL * (segment_BxL == 0)
  a_len_B, pair_len_B = a_mask_BxL.sum(1), mask_BxL.sum(1)
  # B's i-th position (i >= 1) is the pair's position a_len + i - 1; 0 is [CLS].
  source_BxL = jnp.clip(a_len_B[:, None] + jnp.arange(length)[None] - 1, 0, length - 1)
  b_ids_BxL = jnp.take_along_axis(ids_BxL, source_BxL, 1).at[:, 0].set(ids_BxL[:, 0])
  b_mask_BxL = (jnp.arange(length)[None] < (pair_len_B - a_len_B + 1)[:, None])
  zeros_BxL = jnp.zeros_like(segment_BxL)
  return (dict(input_ids=ids_BxL, segment_ids=zeros_BxL, input_mask=a_mask_BxL),
          dict(input_ids=b_ids_BxL, segment_ids=zeros_BxL,
               input_mask=b_mask_BxL.astype(mask_BxL.dtype)))


def info_nce(a_BxD: jax.Array, b_BxD: jax.Array, positive_B: jax.Array,
             temperature: float, denominator: jax.Array | None = None,
             valid_B: jax.Array | None = None) -> dict[str, jax.Array]:
  """Symmetric InfoNCE of pooled A and B segments: row i's positive is
  column i, the other columns are negatives. Averaged over the rows where
  `positive_B` is 1; with the top-1 retrieval count (A finds its B).
  `valid_B` (default all) leaves out the rows and columns where it is 0:
  the empty slots of packed rows."""
  a_BxD = _unit(a_BxD.astype(jnp.float32))
  b_BxD = _unit(b_BxD.astype(jnp.float32))
  logits_BxB = a_BxD @ b_BxD.T / temperature
  if valid_B is not None:
    valid_B = valid_B.astype(bool)
    logits_BxB = jnp.where(valid_B[None, :] & valid_B[:, None], logits_BxB, -1e9)
    positive_B = positive_B & valid_B
  diagonal = jnp.arange(logits_BxB.shape[0])
  a_to_b_B = -jax.nn.log_softmax(logits_BxB, axis=1)[diagonal, diagonal]
  b_to_a_B = -jax.nn.log_softmax(logits_BxB, axis=0)[diagonal, diagonal]
  weights_B = positive_B.astype(jnp.float32)
  count = weights_B.sum()
  correct = ((logits_BxB.argmax(1) == diagonal) * weights_B).sum()
  if denominator is None:
    denominator = jnp.maximum(count, 1.0)
  return dict(cp_loss=(weights_B * (a_to_b_B + b_to_a_B) / 2).sum() / denominator,
              cp_correct=correct, cp_count=count)


def _unit(x_BxD):
  return x_BxD / jnp.maximum(jnp.linalg.norm(x_BxD, axis=-1, keepdims=True), 1e-6)


def packed_segments(batch: Batch) -> tuple[dict, dict]:
  """The A and B segments of packed rows of pairs (lmjax.model.rows), each
  in place: A keeps its tokens, B's are its tokens after the [SEP] that
  ends A, which becomes B's [CLS]; positions count from each segment's
  start (model inputs, packed: input_ids, segment_ids, input_mask,
  positions, example_index, example_starts)."""
  ids_RxL = original_ids(batch)
  mask_RxL, segment_RxL = batch["input_mask"].astype(bool), batch["segment_ids"]
  example_RxL, position_RxL = batch["example_index"], batch["positions"]
  starts_RxE = batch["example_starts"]
  column_RxL = jnp.broadcast_to(jnp.arange(ids_RxL.shape[1]), ids_RxL.shape)
  a_RxL = mask_RxL & (segment_RxL == 0)
  b_RxL = mask_RxL & (segment_RxL == 1)
  # A's last token, followed by a B token of the same pair, is B's [CLS].
  b_cls_RxL = a_RxL & jnp.pad(b_RxL[:, 1:] & (example_RxL[:, 1:] == example_RxL[:, :-1]),
                              ((0, 0), (0, 1)))
  last_cls_RxL = jax.lax.cummax(jnp.where(b_cls_RxL, column_RxL, -1), axis=1)
  cls_id_RxL = jnp.take_along_axis(ids_RxL, column_RxL - position_RxL, axis=1)
  a_len_RxE = ((example_RxL[:, None, :] == jnp.take_along_axis(example_RxL, starts_RxE, 1)
                [:, :, None]) & a_RxL[:, None, :]).sum(-1)
  zeros_RxL = jnp.zeros_like(segment_RxL)
  a = dict(input_ids=ids_RxL, segment_ids=zeros_RxL, input_mask=a_RxL.astype(jnp.int32),
           positions=position_RxL, example_index=example_RxL, example_starts=starts_RxE)
  b = dict(input_ids=jnp.where(b_cls_RxL, cls_id_RxL, ids_RxL), segment_ids=zeros_RxL,
           input_mask=(b_RxL | b_cls_RxL).astype(jnp.int32),
           positions=jnp.where(b_RxL | b_cls_RxL, column_RxL - last_cls_RxL, 0),
           example_index=example_RxL,
           example_starts=jnp.maximum(starts_RxE + a_len_RxE - 1, 0))
  return a, b


def views(batch: Batch, dropout_views: bool = False) -> tuple[dict, dict, jax.Array]:
  """(A inputs, B inputs, positive_B) of a batch's pairs ([R, E] of packed
  rows). With `dropout_views`, a random-next pair's B is replaced by its A,
  and every row is a positive."""
  if "example_starts" in batch:
    a, b = packed_segments(batch)
    positive_RxE = batch["nsp_labels"] == 0
    if dropout_views:
      positive_RxL = jnp.take_along_axis(positive_RxE, _slot_of_token(batch), axis=1)
      b = {k: jnp.where(positive_RxE if k == "example_starts" else positive_RxL, b[k], a[k])
           for k in b}
      positive_RxE = jnp.ones_like(positive_RxE)
    return a, b, positive_RxE
  a, b = segments(batch)
  positive_B = batch["nsp_labels"] == 0
  if dropout_views:
    b = {k: jnp.where(positive_B[:, None], b[k], a[k]) for k in b}
    positive_B = jnp.ones_like(positive_B)
  return a, b, positive_B


def _slot_of_token(batch: Batch) -> jax.Array:
  """[R, L]: the slot (of example_starts) of each token's example in a
  packed row (0 for padding)."""
  starts_RxE, real_RxE = batch["example_starts"], batch["example_mask"] > 0
  column_RxL = jnp.arange(batch["input_ids"].shape[1])
  begun_RxExL = real_RxE[:, :, None] & (starts_RxE[:, :, None] <= column_RxL[None, None, :])
  return jnp.maximum(begun_RxExL.sum(1) - 1, 0)


def flat_pairs(x_BxD: jax.Array) -> jax.Array:
  """Pooled pairs [B, D], or [R, E, D] of packed rows, as [M, D]."""
  return x_BxD.reshape(-1, x_BxD.shape[-1])


def losses(pooled, batch: Batch, temperature: float, dropout_views: bool = False,
           denominator: jax.Array | None = None) -> dict[str, jax.Array]:
  """CP's loss and counts; `pooled(inputs, stream) -> [B, D]` encodes one
  segment's inputs with dropout stream `stream` (0 for A, 1 for B). With
  `dropout_views`, a random-next pair's B is replaced by its A. The loss is
  summed over the positive rows and divided by `denominator` (by default
  their number: the mean). Packed rows' empty slots take no part."""
  a, b, positive = views(batch, dropout_views)
  valid = batch["example_mask"].reshape(-1) if "example_mask" in batch else None
  return info_nce(flat_pairs(pooled(a, 0)), flat_pairs(pooled(b, 1)), positive.reshape(-1),
                  temperature, denominator, valid)
