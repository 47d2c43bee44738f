"""MLM masking of whole batches of pairs, BERT's 80/10/10, vectorized.

Every random number is a hash of (seed, example, position, purpose): the
masks of example i of the stream are a pure function of the seed and i,
i.e. of (seed, epoch, example), new every epoch yet reproducible, and the
same whichever process or batch computes them. round(15%) of the
non-special tokens are predicted (at least one, at most P), chosen as the
P smallest hash keys, or as whole words taken in key order while they fit;
80% become [MASK], 10% a random non-special token, 10% stay.
"""

import dataclasses

import numpy as np

# Purposes of the hashed random numbers.
_CHOOSE, _REPLACE, _RANDOM_ID = 1, 2, 3
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


@dataclasses.dataclass(frozen=True)
class Masking:
  """How pairs become fixed-size MLM + NSP examples."""
  max_seq_length: int = 128
  max_predictions: int = 20  # P: BERT's max_predictions_per_seq
  masked_lm_prob: float = 0.15
  whole_word_masking: bool = False


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """What masking needs of a tokenizer: the ids that start a word, the
  special ids (never chosen, never drawn as a random replacement) and
  [MASK]'s id."""
  word_start_V: np.ndarray
  special_V: np.ndarray
  mask_id: int

  @classmethod
  def of(cls, tokenizer) -> "Vocabulary":
    return cls(tokenizer.word_start_V, tokenizer.special_V, tokenizer.special.mask)


def uniform(seed: int, examples_B: np.ndarray, length: int, purpose: int) -> np.ndarray:
  """[B, length] floats in [0, 1): splitmix64 of (seed, example, position,
  purpose)."""
  with np.errstate(over="ignore"):
    x = (np.uint64(seed) * np.uint64(_GOLDEN)
         + examples_B.astype(np.uint64)[:, None] * np.uint64(_MIX1)
         + np.arange(length, dtype=np.uint64)[None] * np.uint64(_MIX2)
         + np.uint64(purpose) * np.uint64(_GOLDEN) * np.uint64(3))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2)
    x = x ^ (x >> np.uint64(31))
  return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def pad_pairs(pairs: list[dict], length: int) -> dict:
  """Pairs as arrays: tokens [B, L] (0-padded), lengths, B starts, labels."""
  tokens = np.zeros((len(pairs), length), np.int32)
  for row, pair in enumerate(pairs):
    tokens[row, :len(pair["tokens"])] = pair["tokens"]
  return dict(tokens=tokens,
              lengths=np.array([len(p["tokens"]) for p in pairs], np.int32),
              b_starts=np.array([p["b_start"] for p in pairs], np.int32),
              labels=np.array([p["is_random_next"] for p in pairs], np.int32))


def mask_batch(padded: dict, masking: Masking, vocabulary: Vocabulary, seed: int,
               examples_B: np.ndarray) -> dict:
  """Masks a batch of padded pairs whose stream indices are `examples_B`;
  returns the model's batch (see lmjax's batch format)."""
  tokens, lengths = padded["tokens"], padded["lengths"]
  big_b, big_l = tokens.shape
  inside = np.arange(big_l)[None] < lengths[:, None]
  eligible = ~vocabulary.special_V[tokens] & inside
  count = eligible.sum(1)
  wanted = np.minimum(masking.max_predictions,
                      np.maximum(1, np.round(count * masking.masked_lm_prob).astype(int)))
  keys = np.where(eligible, uniform(seed, examples_B, big_l, _CHOOSE), 2.0)
  if masking.whole_word_masking:
    chosen = _whole_words(tokens, eligible, keys, wanted, vocabulary.word_start_V)
  else:
    order = np.argsort(keys, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(big_l)[None].repeat(big_b, 0), axis=1)
    chosen = eligible & (ranks < np.minimum(wanted, count)[:, None])
  return _apply(padded, masking, vocabulary, chosen, seed, examples_B)


def _whole_words(tokens, eligible, keys, wanted, word_start_V) -> np.ndarray:
  """Whole words (runs of eligible pieces from a word start) in the order
  of their first piece's key, each taken only when it still fits."""
  starts = eligible & (word_start_V[tokens] | ~np.roll(eligible, 1, axis=1))
  chosen = np.zeros_like(eligible)
  for row in range(tokens.shape[0]):
    first = np.flatnonzero(starts[row])
    ends = np.append(first[1:], tokens.shape[1])
    sizes = [int(eligible[row, s:e].sum()) for s, e in zip(first, ends, strict=True)]
    budget = wanted[row]
    for w in np.argsort(keys[row, first], kind="stable"):
      if sizes[w] <= budget:
        chosen[row, first[w]:first[w] + sizes[w]] = True
        budget -= sizes[w]
      if budget == 0:
        break
  return chosen


def _apply(padded, masking: Masking, vocabulary: Vocabulary, chosen, seed, examples_B) -> dict:
  tokens, lengths, b_starts = padded["tokens"], padded["lengths"], padded["b_starts"]
  big_b, big_l = tokens.shape
  big_p = masking.max_predictions
  draw = uniform(seed, examples_B, big_l, _REPLACE)
  ordinary = np.flatnonzero(~vocabulary.special_V).astype(np.int32)
  random_ids = ordinary[(uniform(seed, examples_B, big_l, _RANDOM_ID)
                         * len(ordinary)).astype(np.int64)]
  replaced = np.where(draw < 0.8, vocabulary.mask_id,
                      np.where(draw < 0.9, tokens, random_ids))
  input_ids = np.where(chosen, replaced, tokens).astype(np.int32)
  # Chosen positions first, in order: a stable sort of "not chosen".
  positions = np.argsort(~chosen, axis=1, kind="stable")[:, :big_p].astype(np.int32)
  weights = np.take_along_axis(chosen, positions, axis=1)
  positions = np.where(weights, positions, 0)
  position = np.arange(big_l)[None]
  inside = position < lengths[:, None]
  return dict(input_ids=input_ids,
              segment_ids=((position >= b_starts[:, None]) & inside).astype(np.int32),
              input_mask=inside.astype(np.int32),
              masked_positions=positions,
              masked_ids=np.where(weights, np.take_along_axis(tokens, positions, 1), 0
                                  ).astype(np.int32),
              masked_weights=weights.astype(np.float32),
              nsp_labels=padded["labels"])
