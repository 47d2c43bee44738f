"""BERT's sentence pairs for next-sentence prediction, with the semantics of
google-research/bert's create_pretraining_data.py: document-aware chunks,
A a random prefix, B the rest or a random document's span.

`document_pairs` makes [CLS] A [SEP] B [SEP] token sequences once per seed
(lmjax.data.preparation writes them to shards); lmjax.data.masking masks
them anew every epoch.
"""

import random

import numpy as np

from lmjax.data.tokenization import CLS_ID, SEP_ID
from lmjax.errors import UserError


def document_pairs(documents: list[list[np.ndarray]], max_seq_length: int,
                   short_seq_prob: float, seed: int, cls_id: int = CLS_ID,
                   sep_id: int = SEP_ID):
  """Yields (tokens, b_start, is_random_next) of every document's NSP pairs,
  in order, as BERT's tool makes them.

  Chunks of consecutive sentences fill a target length (shorter with
  probability `short_seq_prob`); A is a random prefix of the chunk; B is the
  rest (label 0) or, half the time, a span of a random other document among
  `documents` (label 1; BERT's tool draws it from the same input file), and
  then the chunk's unused sentences are put back. Unlike BERT's tool, a
  one-sentence chunk is paired with its neighbouring sentence when the coin
  says "actual next", so the labels stay balanced. `cls_id` and `sep_id` are
  the tokenizer's (lmjax's SentencePiece ids by default).
  """
  if max_seq_length < 5:
    raise UserError(f"max_seq_length must be at least 5, got {max_seq_length}")
  rng = random.Random(seed)
  for d in range(len(documents)):
    yield from _document_pairs(documents, d, max_seq_length, short_seq_prob, rng,
                               (cls_id, sep_id))


def _document_pairs(documents, d, max_seq_length, short_seq_prob, rng, cls_sep):
  """Yields (tokens, b_start, is_random_next) for document `d`."""
  document = documents[d]
  max_tokens = max_seq_length - 3  # [CLS], [SEP], [SEP]
  target = max_tokens
  if rng.random() < short_seq_prob:
    target = rng.randint(2, max_tokens)
  chunk, length, i = [], 0, 0
  while i < len(document):
    chunk.append(document[i])
    length += len(document[i])
    if i == len(document) - 1 or length >= target:
      is_random_next = int(rng.random() < 0.5)
      if not is_random_next and len(chunk) == 1:
        # BERT's tool forces a random B here, which skews the labels towards
        # "random" (55% on austen, 57% on short documents); lmjax pairs the
        # sentence with its neighbour instead.
        if i + 1 < len(document):
          i += 1
          chunk.append(document[i])
        elif i > 0:
          chunk.insert(0, document[i - 1])
        else:
          is_random_next = 1  # a one-sentence document has no next sentence
      a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
      a = np.concatenate(chunk[:a_end])
      if is_random_next:
        other = d
        for _ in range(10):
          other = rng.randint(0, len(documents) - 1)
          if other != d:
            break
        random_document = documents[other]
        b_parts, b_len = [], 0
        for sentence in random_document[rng.randint(0, len(random_document) - 1):]:
          b_parts.append(sentence)
          b_len += len(sentence)
          if b_len >= target - len(a):
            break
        b = np.concatenate(b_parts)
        i -= len(chunk) - a_end  # put the unused sentences back
      else:
        b = np.concatenate(chunk[a_end:])
      a, b = _truncate_pair(a, b, max_tokens, rng)
      tokens = np.concatenate([cls_sep[:1], a, cls_sep[1:], b, cls_sep[1:]])
      yield tokens, len(a) + 2, is_random_next
      chunk, length = [], 0
    i += 1


def _truncate_pair(a, b, max_tokens, rng):
  """Trims the longer segment, at its front or back at random, until the
  pair fits."""
  a_lo, a_hi, b_lo, b_hi = 0, len(a), 0, len(b)
  while (a_hi - a_lo) + (b_hi - b_lo) > max_tokens:
    if a_hi - a_lo > b_hi - b_lo:
      if rng.random() < 0.5:
        a_lo += 1
      else:
        a_hi -= 1
    elif rng.random() < 0.5:
      b_lo += 1
    else:
      b_hi -= 1
  return a[a_lo:a_hi], b[b_lo:b_hi]
