"""The Apache Beam pipeline behind `python -m lmjax.prepare`.

  documents (text files local or gs://, tfds datasets, the built-ins)
    -> (split, shard) keyed, tokenized documents       one element a document
    -> GroupByKey: a shard's documents, in corpus order
    -> NSP pairs -> one ArrayRecord file a shard        lmjax.data.preparation
    -> the shards' counts, gathered for metadata.json   written last, by the caller

Documents carry their place in the corpus, so a shard's pairs are exactly
those `shard_writing.prepare_in_process` makes: the same format and the same
semantics whichever runner executes it (DirectRunner here; Dataflow, Flink
or Spark for big corpora).
"""

import json
import os
import tempfile
import time

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from lmjax.data import documents, shards, sources, tfds_datasets
from lmjax.data.shard_writing import Settings, shard_of, shard_records, tokenize
from lmjax.errors import MissingSplitError, UserError, first_line

# Elements: (place, split, sentences); place orders documents as the corpus does.
_EXAMPLES_PER_READ = 1000
SHARDS_FILE = "shards.json"


def text_paths(pattern: str) -> list[str]:
  """The files a text pattern names, local or on a bucket, sorted."""
  try:
    (result,) = FileSystems.match([os.path.expanduser(pattern)])
  except Exception as e:  # Beam raises BeamIOError for a bad scheme or bucket
    raise UserError(f"text:{pattern}: {first_line(e)}") from None
  paths = sorted(m.path for m in result.metadata_list)
  if not paths:
    raise UserError(f"text:{pattern}: no file matches")
  return paths


class _ReadTextFile(beam.DoFn):
  """A text file's documents in BERT's format, with progress."""

  def __init__(self):
    self._documents = Metrics.counter("prepare", "documents")
    self._bytes = Metrics.counter("prepare", "bytes")
    self._undecodable = Metrics.counter("prepare", "undecodable_lines")

  def process(self, element):
    part, index, path = element
    start, done, size = time.perf_counter(), 0, 0
    with FileSystems.open(path) as f:
      read = documents.read_documents(_counted(f, lambda n: self._bytes.inc(n)))
    self._undecodable.inc(read.undecodable_lines)
    for d, sentences in enumerate(read.documents):
      self._documents.inc()
      done += 1
      size += sum(len(s) for s in sentences)
      yield (part, index, d), sentences
    seconds = max(time.perf_counter() - start, 1e-9)
    print(f"read {path}: {done:,} documents, {size / 1e6:,.1f} MB in {seconds:.1f}s "
          f"({size / 1e6 / seconds:,.1f} MB/s)", flush=True)


def _counted(lines, count):
  for line in lines:
    count(len(line))
    yield line


class _ReadTfds(beam.DoFn):
  """Examples [start, stop) of a tfds split, as documents."""

  def __init__(self, name: str, data_dir: str, text_field: str):
    self._name, self._data_dir, self._text_field = name, data_dir, text_field
    self._documents = Metrics.counter("prepare", "documents")
    self._bytes = Metrics.counter("prepare", "bytes")

  def setup(self):
    self._sources = {}  # split -> random-access data source, once per worker

  def process(self, element):
    part, split, start, stop = element
    if split not in self._sources:
      builder = tfds_datasets.tfds_builder(self._name, self._data_dir)
      self._sources[split] = builder.as_data_source(split)
    source = self._sources[split]
    for i in range(start, stop):
      sentences = sources.example_sentences(source[i], self._name, self._text_field)
      if sentences:
        self._documents.inc()
        self._bytes.inc(sum(len(s) for s in sentences))
        yield (part, 0, i), split, sentences


def _read(pipeline, source: str, data_dir: str | None, text_field: str):
  """The PCollection of (place, split, sentences) of `source`."""
  parts = []
  for part, name in enumerate(source.split("+")):
    label = f"Read {part} {name}"[:60]
    if name.startswith("text:"):
      paths = text_paths(name[len("text:"):])
      docs = (pipeline | f"{label} files" >> beam.Create(
          [(part, i, p) for i, p in enumerate(paths)])
              | f"{label}" >> beam.ParDo(_ReadTextFile()))
      total = docs | f"{label} count" >> beam.combiners.Count.Globally()
      parts.append(docs | f"{label} split" >> beam.Map(
          lambda d, n: (d[0], sources.text_split(d[1], n), d[1]),
          n=beam.pvalue.AsSingleton(total)))
    else:
      parts.append(_read_tfds(pipeline, label, part, tfds_datasets.tfds_name(name),
                              tfds_datasets.data_dir_or_default(data_dir), text_field))
  return parts[0] if len(parts) == 1 else parts | "Join sources" >> beam.Flatten()


def _read_tfds(pipeline, label, part, name, data_dir, text_field):
  ranges = []
  for split in shards.SPLITS:
    try:
      builder = sources.checked_tfds_builder(name, split, data_dir, text_field)
    except MissingSplitError:
      continue
    count = builder.info.splits[split].num_examples
    ranges += [(part, split, s, min(s + _EXAMPLES_PER_READ, count))
               for s in range(0, count, _EXAMPLES_PER_READ)]
  return (pipeline | f"{label} ranges" >> beam.Create(ranges)
          | label >> beam.ParDo(_ReadTfds(name, data_dir, text_field)))


class _Tokenize(beam.DoFn):
  def __init__(self, settings: Settings):
    self._settings = settings

  def setup(self):
    self._tokenizer = self._settings.tokenizer()

  def process(self, element):
    place, split, sentences = element
    tokens = tokenize(sentences, self._tokenizer)
    if tokens:  # one flat array and the lengths: cheap to move between workers
      yield ((split, shard_of(sentences, self._settings.num_shards)),
             (place, np.concatenate(tokens), np.array([len(t) for t in tokens], np.int32)))


class _WriteShard(beam.DoFn):
  """One shard's pairs as an ArrayRecord file in `directory` (written
  locally, then copied when `directory` is on a bucket)."""

  def __init__(self, directory: str, settings: Settings):
    self._directory, self._settings = directory, settings

  def process(self, element):
    (split, shard), docs = element
    docs = [np.split(flat, np.cumsum(lengths)[:-1])
            for _, flat, lengths in sorted(docs, key=lambda d: d[0])]
    records, counts = shard_records(docs, shard, self._settings)
    name = shards.shard_name(split, shard, self._settings.num_shards)
    target = FileSystems.join(self._directory, name)
    if "://" in self._directory:
      with tempfile.TemporaryDirectory() as tmp:
        shards.write_shard(os.path.join(tmp, name), records)
        size = os.path.getsize(os.path.join(tmp, name))
        with open(os.path.join(tmp, name), "rb") as f, FileSystems.create(target) as out:
          out.write(f.read())
    else:
      shards.write_shard(target, records)
      size = os.path.getsize(target)
    yield dict(split=split, shard=shard, file=name, bytes=size, **counts)


def build(pipeline, source: str, directory: str, settings: Settings,
          data_dir: str | None = None, text_field: str = "text") -> None:
  """Adds the preparation of `source` to `pipeline`: shards into
  `directory`, and their counts into `directory`/shards.json."""
  written = (_read(pipeline, source, data_dir, text_field)
            | "Tokenize" >> beam.ParDo(_Tokenize(settings))
            | "Group by shard" >> beam.GroupByKey()
            | "Write shards" >> beam.ParDo(_WriteShard(directory, settings)))
  _ = (written | "Gather" >> beam.combiners.ToList()
       | "Write counts" >> beam.Map(_write_json, FileSystems.join(directory, SHARDS_FILE)))


def _write_json(value, path: str) -> None:
  with FileSystems.create(path) as f:
    f.write(json.dumps(value).encode())
