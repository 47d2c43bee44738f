"""Preparing pretraining data: documents -> tokenized NSP pairs in shards
(lmjax.data.prepared), the same way in-process and on Apache Beam.

Documents go to shard `bucket(text) % num_shards` of their split; a shard's
documents, in corpus order, make its pairs with `Random(seed + shard)`, and
a random B comes from the same shard (BERT's tool draws it from the same
input file). One shard therefore gives exactly the pairs of the whole
corpus that `instances.document_pairs(..., seed)` gives.
"""

import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lmjax.data import documents, instances, prepared, sources, tokenization
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import ConfigError, UserError

CACHE_VERSION = "2"
LEARN = "learn:"  # data.tokenizer=learn:N: a tokenizer learned from the corpus
_LEARN_THREADS = 4  # fixed: sentencepiece's model depends on its thread count


@dataclasses.dataclass(frozen=True)
class Settings:
  """What shapes the pairs; picklable, so Beam workers can carry it."""
  tokenizer_files: dict  # name -> bytes (Tokenizer.files)
  max_seq_length: int = 128
  short_seq_prob: float = 0.1
  seed: int = 0
  num_shards: int = 1

  def tokenizer(self) -> Tokenizer:
    return Tokenizer.from_files(self.tokenizer_files)

  def check(self) -> None:
    if self.max_seq_length < 5:
      raise UserError(f"max_seq_length must be at least 5, got {self.max_seq_length}")
    if not 0 <= self.short_seq_prob <= 1:
      raise UserError(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
    if self.num_shards < 1:
      raise UserError(f"num_shards must be at least 1, got {self.num_shards}")


def tokenize(sentences: list[str], tokenizer: Tokenizer) -> list[np.ndarray]:
  """A document's sentences as token ids; sentences with no token dropped."""
  return [ids for ids in tokenizer.encode(sentences) if len(ids)]


def shard_of(sentences: list[str], num_shards: int) -> int:
  return documents.bucket("\n".join(sentences), num_shards)


def shard_records(docs: list[list[np.ndarray]], shard: int,
                  settings: Settings) -> tuple[list[bytes], dict]:
  """The records of one shard's pairs, and its counts."""
  records, random_next = [], 0
  special = settings.tokenizer().special
  for tokens, b_start, label in instances.document_pairs(
      docs, settings.max_seq_length, settings.short_seq_prob, settings.seed + shard,
      cls_id=special.cls, sep_id=special.sep):
    records.append(prepared.encode_pair(tokens, b_start, label))
    random_next += label
  tokens = sum(len(s) for d in docs for s in d)
  return records, dict(documents=len(docs), tokens=int(tokens), pairs=len(records),
                       random_next=random_next)


def write_split(directory: Path, split: str, shards: list[list[list[np.ndarray]]],
                settings: Settings) -> dict:
  """Writes a split's shards (documents grouped by shard, in order); returns
  its metadata entry."""
  written = []
  for index, docs in enumerate(shards):
    records, counts = shard_records(docs, index, settings)
    name = prepared.shard_name(split, index, len(shards))
    prepared.write_shard(directory / name, records)
    written.append(dict(file=name, bytes=(directory / name).stat().st_size, **counts))
  return split_entry(written)


def split_entry(shards: list[dict]) -> dict:
  """A split's metadata: its shards (file, pairs, bytes) and their summed
  documents, tokens, pairs and random-next pairs."""
  counts = ("documents", "tokens", "pairs", "random_next")
  return dict(shards=[{k: s[k] for k in ("file", "pairs", "bytes")} for s in shards],
              **{k: sum(s.get(k, 0) for s in shards) for k in counts})


def metadata(source: str, settings: Settings, splits: dict) -> prepared.Metadata:
  tokenizer = settings.tokenizer()
  if not any(entry["pairs"] for entry in splits.values()):
    raise UserError(f"{source}: the corpus yields no sentence pairs")
  return prepared.Metadata(source=source, tokenizer_fingerprint=tokenizer.fingerprint,
                           vocab_size=tokenizer.vocab_size,
                           max_seq_length=settings.max_seq_length,
                           short_seq_prob=settings.short_seq_prob, seed=settings.seed,
                           splits=splits)


def _grouped(docs: Iterable[list[str]], tokenizer: Tokenizer,
             num_shards: int) -> list[list[list[np.ndarray]]]:
  shards = [[] for _ in range(num_shards)]
  for sentences in docs:
    tokenized = tokenize(sentences, tokenizer)
    if tokenized:
      shards[shard_of(sentences, num_shards)].append(tokenized)
  return shards


def prepare_in_process(source: str, settings: Settings, output: Path,
                       data_dir: str | None = None, text_field: str = "text") -> None:
  """Prepares `source` into `output` in this process (a temporary directory
  renamed into place when complete)."""
  settings.check()
  tokenizer = settings.tokenizer()
  tmp = staging_directory(output)
  splits = {}
  try:
    for split in prepared.SPLITS:
      try:
        corpus = sources.load_corpus(source, split, data_dir, text_field)
      except sources.MissingSplitError:
        continue
      shards = _grouped(corpus.documents, tokenizer, settings.num_shards)
      if any(shards):
        splits[split] = write_split(tmp, split, shards, settings)
        splits[split]["undecodable_lines"] = corpus.undecodable_lines
    metadata(source, settings, splits).write(tmp)
    _commit(tmp, output)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def staging_directory(output: str | os.PathLike) -> Path:
  """A fresh `OUTPUT.tmp-PID` to write into before renaming it to OUTPUT;
  those left by killed processes are removed first."""
  output = Path(output)
  for stale in output.parent.glob(f"{output.name}.tmp-*"):
    pid = stale.name.rsplit("-", 1)[1]
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(stale, ignore_errors=True)
  tmp = output.with_name(f"{output.name}.tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  return tmp


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _commit(tmp: Path, output: Path) -> None:
  """Renames the finished directory into place; another process that got
  there first wins (the contents are the same)."""
  try:
    os.replace(tmp, output)
  except OSError:
    if not (output / prepared.METADATA).is_file():
      raise


def cached(data, seed: int, tokenizer: Tokenizer, cache_dir: str) -> tuple[Path, dict]:
  """The prepared directory of a config's `data` source (not `prepared:`),
  made in `cache_dir` on first use. Returns (directory, info)."""
  key = "|".join([CACHE_VERSION, sources.corpus_key(data.source, "train", data.data_dir or None,
                                                    data.text_field),
                  tokenizer.fingerprint, str(data.max_seq_length), str(data.short_seq_prob),
                  str(seed)])
  directory = Path(cache_dir) / f"prepared-{hashlib.sha256(key.encode()).hexdigest()[:20]}"
  if directory.exists():
    try:
      prepared.check(directory)
      return directory, {"cache": "hit"}
    except UserError:
      shutil.rmtree(directory, ignore_errors=True)  # damaged: made again below
  start = time.perf_counter()
  print(f"preparing {data.source} into {directory} (once; for big corpora use "
        "python -m lmjax.data.prepare)", flush=True)
  settings = Settings(tokenizer.files, data.max_seq_length, data.short_seq_prob, seed)
  directory.parent.mkdir(parents=True, exist_ok=True)
  prepare_in_process(data.source, settings, directory, data.data_dir or None,
                     data.text_field)
  return directory, {"cache": "miss", "prepare_s": round(time.perf_counter() - start, 2)}


def learned_size(tokenizer_field: str) -> int | None:
  """N of a `data.tokenizer` of 'learn:N', None of a file or ''; ConfigError
  when N is not a number of pieces."""
  if not tokenizer_field.startswith(LEARN):
    return None
  size = tokenizer_field[len(LEARN):]
  if not size.isdigit() or int(size) <= tokenization.NUM_SPECIAL:
    raise ConfigError(f"config.data.tokenizer={tokenizer_field}: learn:N takes a number of "
                      f"pieces above {tokenization.NUM_SPECIAL}, e.g. learn:8000")
  return int(size)


def learned_tokenizer(data, cache_dir: str) -> Path:
  """The file of the tokenizer `data.tokenizer='learn:N'` names: a unigram
  model of N pieces (fewer if the text has too few) of the sentences of
  data.source's training split, learned into `cache_dir` on first use.
  Every process learns the same model."""
  size = learned_size(data.tokenizer)
  key = "|".join([CACHE_VERSION, sources.corpus_key(data.source, "train", data.data_dir or None,
                                                    data.text_field),
                  str(size), str(_LEARN_THREADS)])
  path = Path(cache_dir) / f"tokenizer-{hashlib.sha256(key.encode()).hexdigest()[:20]}.model"
  if path.is_file():
    try:
      Tokenizer.load(path)
      return path
    except UserError:
      path.unlink(missing_ok=True)  # damaged: learned again below
  corpus = sources.load_corpus(data.source, "train", data.data_dir or None, data.text_field)
  print(f"learning a {size:,}-piece tokenizer from {data.source} into {path} (once)",
        flush=True)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # processes may share the cache
  try:
    learned = tokenization.train((s for d in corpus.documents for s in d), size, tmp,
                                 progress=lambda _: None, num_threads=_LEARN_THREADS,
                                 at_most=True)
    os.replace(tmp, path)
    if learned.vocab_size < size:
      print(f"{data.source} is too small a text for {size:,} pieces: the tokenizer has "
            f"{learned.vocab_size:,}", flush=True)
  except UserError as e:
    raise UserError(f"config.data.tokenizer={data.tokenizer}: {e}") from None
  finally:
    tmp.unlink(missing_ok=True)
  return path
