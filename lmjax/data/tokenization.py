"""SentencePiece tokenizer with BERT's special tokens at fixed ids.

[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4. The last three are control
symbols: they only arise by id, never from encoding text, so a corpus that
happens to contain the string "[MASK]" cannot forge one.
"""

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm

from lmjax import paths
from lmjax.errors import UserError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIAL = 5
_WORD_START = "\u2581"  # sentencepiece's marker of a piece that begins a word


class Tokenizer:
  """Encodes text to int32 ids and back; knows which pieces start a word."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    pieces = [self._sp.id_to_piece(i) for i in range(self.vocab_size)]
    if pieces[:NUM_SPECIAL] != ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]:
      raise UserError("tokenizer model does not have lmjax's special tokens "
                      "[PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4")
    # Special tokens count as word starts, so whole-word masking never glues
    # a word onto [CLS] or [SEP].
    self.word_start_V = np.array(
        [i < NUM_SPECIAL or p.startswith(_WORD_START) for i, p in enumerate(pieces)])

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Tokenizer":
    path = paths.resolve(path)
    if not path.is_file():
      raise UserError(f"{path}: tokenizer model not found")
    model_proto = path.read_bytes()
    if not model_proto:
      raise UserError(f"{path}: not a sentencepiece model (empty file)")
    try:
      return cls(model_proto)
    except RuntimeError as e:
      raise UserError(f"{path}: not a sentencepiece model ({e})") from None

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def fingerprint(self) -> str:
    """A short hash of the model, to key caches and check checkpoints."""
    return hashlib.sha256(self.model_proto).hexdigest()[:16]

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Returns the int32 ids of each text."""
    return [np.asarray(ids, np.int32) for ids in self._sp.encode(list(texts))]

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def pieces(self, ids: Iterable[int]) -> list[str]:
    return [self._sp.id_to_piece(int(i)) for i in ids]

  def word_starts(self, ids: np.ndarray) -> np.ndarray:
    """Returns a bool array: True where the piece begins a new word."""
    return self.word_start_V[ids]


def train(sentences: Iterable[str], vocab_size: int, output: str | os.PathLike,
          max_sentences: int = 2_000_000,
          progress: Callable[[str], None] = print) -> Tokenizer:
  """Trains a unigram model on `sentences` and writes it to `output`.

  Reads at most `max_sentences` (sentencepiece samples among them).
  """
  if vocab_size <= NUM_SPECIAL:
    raise UserError(f"vocab_size must be above {NUM_SPECIAL}, got {vocab_size}")
  sample = []
  for sentence in sentences:
    if sentence.strip():
      sample.append(sentence)
      if len(sample) % 100_000 == 0:
        progress(f"read {len(sample):,} sentences")
      if len(sample) >= max_sentences:
        break
  if not sample:
    raise UserError("no text to train a tokenizer on")
  progress(f"training a {vocab_size:,}-piece unigram model on "
           f"{len(sample):,} sentences")
  start = time.perf_counter()
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample), model_writer=model,
        vocab_size=vocab_size, model_type="unigram", character_coverage=0.9995,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1,
        pad_piece="[PAD]", unk_piece="[UNK]",
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        num_threads=os.cpu_count() or 1,
        minloglevel=2)
  except RuntimeError as e:
    raise UserError(f"sentencepiece could not train: {str(e).splitlines()[0]}") from None
  tokenizer = Tokenizer(model.getvalue())
  output = paths.resolve(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  paths.write_whole(output, tokenizer.model_proto)
  progress(f"wrote {output} ({tokenizer.vocab_size:,} pieces) in "
           f"{time.perf_counter() - start:.1f}s")
  return tokenizer
