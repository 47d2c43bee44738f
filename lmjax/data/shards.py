"""Prepared pretraining data: NSP sentence pairs, tokenized and unmasked, in
ArrayRecord shards beside a metadata.json, read with random access.

  DIR/metadata.json                         what made the shards, and their counts
  DIR/train-00000-of-00004.array_record     one record per pair
  DIR/validation-00000-of-00001.array_record

A record is int32 little-endian: [b_start, is_random_next, token ids...].
Pair i of a split is found from the shards' counts alone, so a reader holds
nothing that grows with the corpus. metadata.json is written last: a
directory without it is not a prepared directory (an interrupted prepare).
"""

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lmjax.errors import MissingSplitError, UserError, first_line

FORMAT = "lmjax-nsp-pairs"
VERSION = 1
METADATA = "metadata.json"
SPLITS = ("train", "validation")


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def encode_pair(tokens: np.ndarray, b_start: int, is_random_next: int) -> bytes:
  return np.concatenate([[b_start, is_random_next], tokens]).astype("<i4").tobytes()


def decode_pair(record: bytes) -> dict:
  values = np.frombuffer(record, "<i4")
  return dict(tokens=values[2:].astype(np.int32), b_start=int(values[0]),
              is_random_next=int(values[1]))


def write_shard(path: str | os.PathLike, records: Iterable[bytes]) -> int:
  """Writes one ArrayRecord shard (random access: one record a chunk,
  snappy, which decodes fastest);
  returns the number of records."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1,snappy")
  count = 0
  try:
    for record in records:
      writer.write(record)
      count += 1
  finally:
    writer.close()
  return count


@dataclasses.dataclass(frozen=True)
class Metadata:
  """What a prepared directory holds: the settings that made it (tokenizer
  fingerprint, lengths, seed) and, per split, its shards with their counts."""
  source: str
  tokenizer_fingerprint: str
  vocab_size: int
  max_seq_length: int
  short_seq_prob: float
  seed: int
  splits: dict  # split -> {"shards": [{"file", "pairs", "bytes"}], "documents", "tokens", ...}

  def to_json(self) -> dict:
    return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}

  @classmethod
  def read(cls, directory: str | os.PathLike) -> "Metadata":
    path = Path(directory) / METADATA
    if not path.is_file():
      raise UserError(f"{directory}: no {METADATA} (not a prepared directory, or its "
                      "preparation did not finish); prepare it with python -m "
                      "lmjax.prepare")
    try:
      data = json.loads(path.read_text())
      if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
      fields = {f.name: data[f.name] for f in dataclasses.fields(cls)}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise UserError(f"{path}: not lmjax's prepared-data metadata ({e})") from None
    return cls(**fields)

  def write(self, directory: str | os.PathLike) -> None:
    path = Path(directory) / METADATA
    tmp = path.with_name(METADATA + ".tmp")
    tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
    os.replace(tmp, path)

  def counts(self, split: str) -> dict:
    """Documents, tokens, pairs and random-next pairs of a split."""
    info = self.splits[split]
    return {k: info[k] for k in ("documents", "tokens", "pairs", "random_next")}


class PreparedPairs:
  """The pairs of one split of a prepared directory, by global index: pair i
  is record i of the shards laid end to end. Only the shards' counts are
  held; records are read when asked for."""

  def __init__(self, directory: str | os.PathLike, split: str):
    self.metadata = Metadata.read(directory)
    if split not in self.metadata.splits:
      raise MissingSplitError(f"{self.metadata.source}: no {split} split (prepared in "
                              f"{directory}: {', '.join(self.metadata.splits)})")
    shards = self.metadata.splits[split]["shards"]
    self._paths = [os.fspath(Path(directory) / s["file"]) for s in shards]
    counts = [s["pairs"] for s in shards]
    for path, shard in zip(self._paths, shards, strict=True):
      _check_shard(Path(path), shard)
    self._readers = [_open_reader(path, count) for path, count in
                     zip(self._paths, counts, strict=True)]
    self._ends = np.cumsum(counts)

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, i: int) -> dict:
    return self.get_many([i])[0]

  def get_many(self, indices) -> list[dict]:
    """Pairs `indices`, each shard's records read in one call."""
    indices = np.asarray(indices, np.int64)
    shards = np.searchsorted(self._ends, indices, side="right")
    records = [None] * len(indices)
    for shard in np.unique(shards):
      rows = np.flatnonzero(shards == shard)
      start = self._ends[shard - 1] if shard else 0
      positions = (indices[rows] - start).tolist()
      for row, record in zip(rows, self._reader(shard).read(positions), strict=True):
        records[row] = record
    return [decode_pair(r) for r in records]

  def _reader(self, shard: int):
    if self._readers[shard] is None:  # after unpickling in a worker process
      self._readers[shard] = _open_reader(self._paths[shard], None)
    return self._readers[shard]

  def __getstate__(self):  # grain may pickle the source into worker processes
    return {**self.__dict__, "_readers": [None] * len(self._readers)}


def check(directory: str | os.PathLike) -> Metadata:
  """The metadata of a prepared directory whose every shard is present and
  whole; UserError naming the file otherwise. Reads no records."""
  metadata = Metadata.read(directory)
  for entry in metadata.splits.values():
    for shard in entry["shards"]:
      _check_shard(Path(directory) / shard["file"], shard)
  return metadata


def _check_shard(path: Path, shard: dict) -> None:
  if not path.is_file():
    raise UserError(f"{path}: missing shard (the prepared directory is incomplete)")
  size = path.stat().st_size
  if size != shard["bytes"]:
    raise UserError(f"{path}: {size:,} bytes, its metadata says {shard['bytes']:,} "
                    "(a truncated or foreign shard); prepare the directory again")


def _open_reader(path: str, expected: int | None):
  """A random-access reader of one shard, which must hold `expected` records."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  try:
    reader = array_record_module.ArrayRecordReader(
        path, "readahead_buffer_size:0,max_parallelism:1")
    found = reader.num_records()
  except Exception as e:  # array_record raises RuntimeError / ValueError on a bad file
    raise UserError(f"{path}: not a readable ArrayRecord file "
                    f"({first_line(e)})") from None
  if expected is not None and found != expected:
    raise UserError(f"{path}: {found:,} records, its metadata says {expected:,} (a "
                    "foreign shard); prepare the directory again")
  return reader
