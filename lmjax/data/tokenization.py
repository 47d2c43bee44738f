"""Tokenizers with BERT's special tokens: SentencePiece, WordPiece and BPE.

lmjax's own tokenizers are SentencePiece unigram models with [PAD]=0,
[UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4 as control symbols: they only arise by
id, never from encoding text, so a corpus that happens to contain the
string "[MASK]" cannot forge one. A Hugging Face BERT brings a WordPiece
vocabulary (`tokenizer.json`, or `vocab.txt` with `tokenizer_config.json`),
a Hugging Face ModernBERT a byte-level BPE one (`tokenizer.json`), each read
through the `tokenizers` library with the ids and the text handling
transformers gives it. Both have one interface, and `Tokenizer.load(PATH)`
picks by the file (or directory) it is given.
"""

import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm

from lmjax import paths
from lmjax.errors import UserError, first_line

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4  # of lmjax's SentencePiece models
NUM_SPECIAL = 5
SPECIAL_PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORD_START = "\u2581"  # sentencepiece's marker of a piece that begins a word
_SENTENCEPIECE = "tokenizer.model"
_WORDPIECE = ("tokenizer.json", "vocab.txt")
_WORDPIECE_CONFIG = "tokenizer_config.json"
FILE_NAMES = (_SENTENCEPIECE, *_WORDPIECE)  # what a directory's tokenizer may be


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  pad: int
  unk: int
  cls: int
  sep: int
  mask: int


class Tokenizer:
  """Encodes text to int32 ids and back; knows its special ids, which
  pieces start a word, and the files it is written as."""

  files: dict[str, bytes]  # name -> content, as a workdir or HF directory holds it
  special: SpecialIds

  def _index_vocabulary(self, pieces: list[str], word_start) -> None:
    special_ids = list(dataclasses.astuple(self.special))
    self.special_V = np.zeros(len(pieces), bool)
    self.special_V[special_ids] = True
    # Special tokens count as word starts, so whole-word masking never glues
    # a word onto [CLS] or [SEP].
    self.word_start_V = np.array([bool(self.special_V[i]) or word_start(p)
                                  for i, p in enumerate(pieces)])
    self.ordinary_ids = np.flatnonzero(~self.special_V).astype(np.int32)

  @staticmethod
  def from_files(files: dict[str, bytes], where: str = "") -> "Tokenizer":
    """The tokenizer these files (by name) hold; UserError naming `where`
    when they hold none."""
    if _SENTENCEPIECE in files:
      return SentencePieceTokenizer.from_bytes(files[_SENTENCEPIECE],
                                               _named(where, _SENTENCEPIECE))
    if any(name in files for name in _WORDPIECE):
      return HfTokenizer(files, where)
    raise UserError(f"{where}: no tokenizer (lmjax reads {', '.join(FILE_NAMES)})")

  @staticmethod
  def load(path: str | os.PathLike) -> "Tokenizer":
    """The tokenizer in a file (tokenizer.model, tokenizer.json, vocab.txt,
    or any *.model) or a directory holding one."""
    path = paths.resolve(path)
    if path.is_dir():
      names = [n for n in (*FILE_NAMES, _WORDPIECE_CONFIG) if (path / n).is_file()]
      if not set(names) & set(FILE_NAMES):
        raise UserError(f"{path}: no tokenizer (lmjax reads {', '.join(FILE_NAMES)})")
      return Tokenizer.from_files({n: (path / n).read_bytes() for n in names}, str(path))
    if not path.is_file():
      raise UserError(f"{path}: tokenizer not found")
    if path.name in _WORDPIECE:
      config = path.parent / _WORDPIECE_CONFIG
      files = {path.name: path.read_bytes(),
               **({_WORDPIECE_CONFIG: config.read_bytes()} if config.is_file() else {})}
      return HfTokenizer(files, str(path))
    return SentencePieceTokenizer.from_bytes(path.read_bytes(), str(path))

  @property
  def vocab_size(self) -> int:
    return len(self.word_start_V)

  @property
  def fingerprint(self) -> str:
    """A short hash of the tokenizer's files, to key caches and check checkpoints."""
    if list(self.files) == [_SENTENCEPIECE]:
      return hashlib.sha256(self.files[_SENTENCEPIECE]).hexdigest()[:16]
    digest = hashlib.sha256()
    for name in sorted(self.files):
      digest.update(name.encode() + b"\0" + self.files[name] + b"\0")
    return digest.hexdigest()[:16]

  def word_starts(self, ids: np.ndarray) -> np.ndarray:
    """Returns a bool array: True where the piece begins a new word."""
    return self.word_start_V[ids]

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Returns the int32 ids of each text, without [CLS] or [SEP]."""
    raise NotImplementedError

  def decode(self, ids: Iterable[int]) -> str:
    raise NotImplementedError

  def pieces(self, ids: Iterable[int]) -> list[str]:
    raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
  """An lmjax SentencePiece model: special tokens at ids 0-4."""

  special = SpecialIds(PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)

  def __init__(self, model_proto: bytes):
    self.files = {_SENTENCEPIECE: model_proto}
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
    if tuple(pieces[:NUM_SPECIAL]) != SPECIAL_PIECES:
      raise UserError("tokenizer model does not have lmjax's special tokens "
                      "[PAD] [UNK] [CLS] [SEP] [MASK] at ids 0-4")
    self._index_vocabulary(pieces, lambda p: p.startswith(_WORD_START))

  @classmethod
  def from_bytes(cls, model_proto: bytes, where: str) -> "SentencePieceTokenizer":
    if not model_proto:
      raise UserError(f"{where}: not a sentencepiece model (empty file)")
    try:
      return cls(model_proto)
    except RuntimeError as e:
      raise UserError(f"{where}: not a sentencepiece model ({e})") from None

  @property
  def model_proto(self) -> bytes:
    return self.files[_SENTENCEPIECE]

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(ids, np.int32) for ids in self._sp.encode(list(texts))]

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def pieces(self, ids: Iterable[int]) -> list[str]:
    return [self._sp.id_to_piece(int(i)) for i in ids]


class HfTokenizer(Tokenizer):
  """A Hugging Face `tokenizers` vocabulary, as transformers reads it:
  BERT's WordPiece from `tokenizer.json` as it is, or from `vocab.txt` with
  BERT's text handling (clean-up, CJK characters split, lower-casing and
  accent stripping as `tokenizer_config.json` says: `do_lower_case`, default
  true; `strip_accents`, default: as lower-casing); or the BPE (ModernBERT's,
  byte-level) or unigram model of a `tokenizer.json`. As in transformers, the
  special tokens' strings in text are those tokens; the vocabulary must have
  BERT's five ([PAD] [UNK] [CLS] [SEP] [MASK], as ModernBERT's has)."""

  # A piece that begins a word, by the tokenizer.json model's type: WordPiece
  # marks the others (##); byte-level BPE marks a word start by its space (Ġ),
  # metaspace models by theirs (▁).
  WORD_STARTS = {"WordPiece": lambda p: not p.startswith("##"),
                 "BPE": lambda p: p.startswith(("\u0120", _WORD_START)),
                 "Unigram": lambda p: p.startswith(_WORD_START)}

  def __init__(self, files: dict[str, bytes], where: str = ""):
    import tokenizers  # pylint: disable=import-outside-toplevel
    self.files = dict(files)
    name = next(n for n in _WORDPIECE if n in files)
    where = _named(where, name)
    try:
      if name == "tokenizer.json":
        self._tok = tokenizers.Tokenizer.from_str(files[name].decode())
        self.model_type = json.loads(files[name])["model"]["type"]
      else:
        self._tok = _from_vocabulary(files[name].decode(), _config(files, where), where)
        self.model_type = "WordPiece"
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-exception-caught  # tokenizers' own
      raise UserError(f"{where}: not a tokenizers vocabulary "
                      f"({first_line(e)})") from None
    if self.model_type not in self.WORD_STARTS:
      raise UserError(f"{where}: a {self.model_type} model; lmjax reads "
                      f"{', '.join(self.WORD_STARTS)} tokenizers")
    self._tok.no_padding()
    self._tok.no_truncation()
    vocab = self._tok.get_vocab(with_added_tokens=True)
    missing = [p for p in SPECIAL_PIECES if p not in vocab]
    if missing:
      raise UserError(f"{where}: the vocabulary has no {', '.join(missing)}")
    self.special = SpecialIds(*(vocab[p] for p in SPECIAL_PIECES))
    pieces = [""] * (max(vocab.values()) + 1)
    for piece, i in vocab.items():
      pieces[i] = piece
    self._pieces = pieces
    self._index_vocabulary(pieces, self.WORD_STARTS[self.model_type])

  @property
  def is_wordpiece(self) -> bool:
    return self.model_type == "WordPiece"

  def vocab_txt(self) -> bytes:
    """A WordPiece vocabulary as Google's vocab.txt: one piece a line, in id
    order."""
    return "".join(piece + "\n" for piece in self._pieces).encode()

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encodings]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def pieces(self, ids: Iterable[int]) -> list[str]:
    return [self._pieces[int(i)] for i in ids]


def _named(where: str, name: str) -> str:
  """`where` (a file, or the directory holding `name`) as the file's path."""
  return name if not where else where if where.endswith(name) else f"{where}/{name}"


def _config(files: dict[str, bytes], where: str) -> dict:
  if _WORDPIECE_CONFIG not in files:
    return {}
  try:
    return dict(json.loads(files[_WORDPIECE_CONFIG]))
  except (ValueError, TypeError):
    raise UserError(f"{where}: {_WORDPIECE_CONFIG} is not a JSON object") from None


def _from_vocabulary(text: str, config: dict, where: str):
  """BERT's WordPiece tokenizer from the lines of vocab.txt."""
  from tokenizers import Tokenizer as Rust  # pylint: disable=import-outside-toplevel
  from tokenizers import decoders, models, normalizers, pre_tokenizers
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  vocab = {}
  for index, piece in enumerate(lines):  # a piece's id is its line; a repeat, its last
    vocab[piece.rstrip("\r")] = index
  if "[UNK]" not in vocab:
    raise UserError(f"{where}: the vocabulary has no [UNK]")
  lowercase = bool(config.get("do_lower_case", True))
  tok = Rust(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
      strip_accents=config.get("strip_accents"), lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  tok.add_special_tokens([p for p in SPECIAL_PIECES if p in vocab])
  return tok


def check_output(output: str | os.PathLike) -> None:
  """UserError when `output` cannot be where a trained model goes."""
  if paths.resolve(output).is_dir():
    raise UserError(f"{output} is a directory; name the .model file to write")


def _unigram(sample: list[str], vocab_size: int, num_threads: int,
             exact: bool) -> "SentencePieceTokenizer":
  """A unigram model of `vocab_size` pieces (at most that many unless
  `exact`) with lmjax's special tokens; RuntimeError when it cannot be."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sample), model_writer=model,
      vocab_size=vocab_size, model_type="unigram", character_coverage=0.9995,
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1,
      pad_piece="[PAD]", unk_piece="[UNK]",
      control_symbols=["[CLS]", "[SEP]", "[MASK]"],
      num_threads=num_threads, hard_vocab_limit=exact, minloglevel=2)
  return SentencePieceTokenizer(model.getvalue())


def train(sentences: Iterable[str], vocab_size: int, output: str | os.PathLike,
          max_sentences: int = 2_000_000,
          progress: Callable[[str], None] = print,
          num_threads: int | None = None, at_most: bool = False) -> Tokenizer:
  """Trains a unigram model on `sentences` and writes it to `output`.

  Reads at most `max_sentences` (sentencepiece samples among them). The
  model depends on `num_threads` (default: one a core): the same sentences
  and thread count give the same model on every machine. `at_most`: a text
  too small for `vocab_size` pieces gets fewer instead of an error.
  """
  if vocab_size <= NUM_SPECIAL:
    raise UserError(f"vocab_size must be above {NUM_SPECIAL}, got {vocab_size}")
  check_output(output)
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
  threads = num_threads or os.cpu_count() or 1
  try:
    tokenizer = _unigram(sample, vocab_size, threads, exact=not at_most)
  except RuntimeError as e:
    try:  # most often a text too small for the size: say the size it allows
      largest = _unigram(sample, vocab_size, threads, exact=False).vocab_size
    except RuntimeError:
      raise UserError(f"sentencepiece could not train: {first_line(e)}") from None
    raise UserError(f"{len(sample):,} sentences are too small a text for {vocab_size:,} "
                    f"pieces: at most {largest:,} (vocab_size={largest})") from None
  output = paths.resolve(output)
  output.parent.mkdir(parents=True, exist_ok=True)
  paths.write_whole(output, tokenizer.model_proto)
  progress(f"wrote {output} ({tokenizer.vocab_size:,} pieces) in "
           f"{time.perf_counter() - start:.1f}s")
  return tokenizer
