"""Writing pretraining data: documents -> tokenized NSP pairs in shards
(lmjax.data.shards). The steps here are shared by the in-process writer
(`prepare_in_process`, which the cache uses) and the Apache Beam graph
(lmjax.data.beam_pipeline).

Documents go to shard `bucket(text) % num_shards` of their split; a shard's
documents, in corpus order, make its pairs with `Random(seed + shard)`, and
a random B comes from the same shard (BERT's tool draws it from the same
input file). One shard therefore gives exactly the pairs of the whole
corpus that `instances.document_pairs(..., seed)` gives.
"""

import dataclasses
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lmjax.data import documents, instances, shards, sources
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import MissingSplitError, UserError


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
    records.append(shards.encode_pair(tokens, b_start, label))
    random_next += label
  tokens = sum(len(s) for d in docs for s in d)
  return records, dict(documents=len(docs), tokens=int(tokens), pairs=len(records),
                       random_next=random_next)


def write_split(directory: Path, split: str, by_shard: list[list[list[np.ndarray]]],
                settings: Settings) -> dict:
  """Writes a split's shards (documents grouped by shard, in order); returns
  its metadata entry."""
  written = []
  for index, docs in enumerate(by_shard):
    records, counts = shard_records(docs, index, settings)
    name = shards.shard_name(split, index, len(by_shard))
    shards.write_shard(directory / name, records)
    written.append(dict(file=name, bytes=(directory / name).stat().st_size, **counts))
  return split_entry(written)


def split_entry(entries: list[dict]) -> dict:
  """A split's metadata: its shards (file, pairs, bytes) and their summed
  documents, tokens, pairs and random-next pairs."""
  counts = ("documents", "tokens", "pairs", "random_next")
  return dict(shards=[{k: s[k] for k in ("file", "pairs", "bytes")} for s in entries],
              **{k: sum(s.get(k, 0) for s in entries) for k in counts})


def metadata(source: str, settings: Settings, splits: dict) -> shards.Metadata:
  tokenizer = settings.tokenizer()
  if not any(entry["pairs"] for entry in splits.values()):
    raise UserError(f"{source}: the corpus yields no sentence pairs")
  return shards.Metadata(source=source, tokenizer_fingerprint=tokenizer.fingerprint,
                         vocab_size=tokenizer.vocab_size,
                         max_seq_length=settings.max_seq_length,
                         short_seq_prob=settings.short_seq_prob, seed=settings.seed,
                         splits=splits)


def _grouped(docs: Iterable[list[str]], tokenizer: Tokenizer,
             num_shards: int) -> list[list[list[np.ndarray]]]:
  by_shard = [[] for _ in range(num_shards)]
  for sentences in docs:
    tokenized = tokenize(sentences, tokenizer)
    if tokenized:
      by_shard[shard_of(sentences, num_shards)].append(tokenized)
  return by_shard


def prepare_in_process(source: str, settings: Settings, output: Path,
                       data_dir: str | None = None, text_field: str = "text") -> None:
  """Prepares `source` into `output` in this process (a temporary directory
  renamed into place when complete)."""
  settings.check()
  tokenizer = settings.tokenizer()
  tmp = staging_directory(output)
  splits = {}
  try:
    for split in shards.SPLITS:
      try:
        corpus = sources.load_corpus(source, split, data_dir, text_field)
      except MissingSplitError:
        continue
      by_shard = _grouped(corpus.documents, tokenizer, settings.num_shards)
      if any(by_shard):
        splits[split] = write_split(tmp, split, by_shard, settings)
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
    if not (output / shards.METADATA).is_file():
      raise
