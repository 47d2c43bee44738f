"""Labelled examples for fine-tuning: tasks, their sources, fixed-length encoding.

A task source is a string:
  rt_polarity                      the built-in Rotten Tomatoes sentiment task
  glue/NAME                        a GLUE task from tensorflow-datasets: cola, sst2,
                                   mrpc, qqp, stsb, mnli, qnli, rte, wnli
  tsv:PATH  csv:PATH  jsonl:PATH   local files whose header (or JSON keys) names
                                   the columns
A local PATH may hold `{split}` to name one file per split (train, validation,
test); without it, rows whose text hashes into bucket 0 of 10 are the test
split, bucket 1 validation and the rest train. A split without a label column
(a GLUE test split, a test file without labels) is for prediction only.
"""

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

from lmjax.data import builtin, sources
from lmjax.data.tokenizer import CLS_ID, PAD_ID, SEP_ID, Tokenizer
from lmjax.errors import ConfigError, UserError

SPLITS = ("train", "validation", "test")
LOCAL_FORMATS = ("tsv", "csv", "jsonl")

# The columns a local file's text is taken from when the config names none,
# the first that the header has: pairs first, then single texts.
_DEFAULT_TEXT_FIELDS = (("sentence1", "sentence2"), ("text_a", "text_b"),
                        ("premise", "hypothesis"), ("question1", "question2"),
                        ("question", "sentence"), ("text",), ("sentence",))


@dataclasses.dataclass(frozen=True)
class Task:
  """What a task's examples look like and how it is scored.

  `labels` are the class names in index order; None makes a regression task.
  `metrics` come from lmjax.train.metrics.METRICS; the first is the main one.
  `splits` maps train / validation / test to the source's own split names.
  """
  name: str
  text_fields: tuple[str, ...]
  label_field: str
  labels: tuple[str, ...] | None
  metrics: tuple[str, ...]
  splits: dict[str, str] = dataclasses.field(
      default_factory=lambda: {s: s for s in SPLITS})

  @property
  def is_regression(self) -> bool:
    return self.labels is None

  @property
  def num_labels(self) -> int:
    return 1 if self.labels is None else len(self.labels)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Task":
    labels = None if d["labels"] is None else tuple(d["labels"])
    return cls(d["name"], tuple(d["text_fields"]), d["label_field"], labels,
               tuple(d["metrics"]), dict(d["splits"]))


# name: (text fields, class names or None for a score, metrics main first).
# Main metrics are those the BERT paper reports for each task.
GLUE = {
    "cola": (("sentence",), ("unacceptable", "acceptable"), ("matthews_corr", "accuracy")),
    "sst2": (("sentence",), ("negative", "positive"), ("accuracy",)),
    "mrpc": (("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    "qqp": (("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    "stsb": (("sentence1", "sentence2"), None, ("spearman", "pearson")),
    "mnli": (("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
             ("accuracy",)),
    "qnli": (("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",)),
    "rte": (("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",)),
    "wnli": (("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",)),
}


@dataclasses.dataclass
class Examples:
  """One split: a tuple of 1 or 2 texts per example, and their labels (class
  indices or scores), or None when the split has no labels."""
  texts: list[tuple[str, ...]]
  labels: np.ndarray | None

  def __len__(self) -> int:
    return len(self.texts)


def _local(source: str) -> tuple[str, str] | None:
  """(format, path) of a local source, or None."""
  fmt, sep, path = source.partition(":")
  return (fmt, os.path.expanduser(path)) if sep and fmt in LOCAL_FORMATS else None


def split_names(fields: str) -> tuple[str, ...]:
  return tuple(f.strip() for f in fields.split(",") if f.strip())


def resolve_task(config, data_dir: str | None = None) -> Task:
  """The Task of a config's `task` section: a known task's definition, or a
  local file's, with columns, labels and metrics from the config (labels
  default to the sorted labels of the train split)."""
  source, metrics = config.source, split_names(config.metrics)
  if source == "rt_polarity":
    return Task("rt_polarity", ("text",), "label", ("rotten", "fresh"),
                metrics or ("accuracy", "f1"))
  if source.startswith("glue/"):
    name = source[len("glue/"):]
    if name not in GLUE:
      raise ConfigError(f"config.task.source: unknown GLUE task {name!r} (one of "
                        f"{', '.join(GLUE)})")
    fields, labels, task_metrics = GLUE[name]
    splits = ({"train": "train", "validation": "validation_matched", "test": "test_matched"}
              if name == "mnli" else {s: s for s in SPLITS})
    return Task(source, fields, "label", labels, metrics or task_metrics, splits)
  local = _local(source)
  if local is None:
    raise ConfigError(f"config.task.source {source!r} is not rt_polarity, glue/NAME, "
                      "tsv:PATH, csv:PATH or jsonl:PATH")
  fmt, path = local
  train_file = path.replace("{split}", "train")
  header = _header(fmt, train_file)
  text_fields = split_names(config.text_fields) or next(
      (f for f in _DEFAULT_TEXT_FIELDS if set(f) <= set(header)), None)
  if text_fields is None:
    raise UserError(f"{train_file}: no text column among {', '.join(header)}; name it "
                    "with --config.task.text_fields=COLUMN[,PAIR_COLUMN]")
  if len(text_fields) > 2:
    raise ConfigError(f"config.task.text_fields names {len(text_fields)} columns; "
                      "a task has one text or a pair")
  for field in (*text_fields, config.label_field):
    if field not in header:
      raise UserError(f"{train_file}: no column {field!r} (columns: {', '.join(header)})")
  if config.regression:
    labels = None
  elif config.labels:
    labels = split_names(config.labels)
  else:
    labels = _sorted_labels({raw for _, _, raw in _rows(fmt, path, "train", text_fields,
                                                          config.label_field, True)})
  if labels is not None and len(labels) < 2:
    raise UserError(f"{train_file}: a classification task needs at least 2 labels, "
                    f"found {list(labels)}")
  default_metrics = (("pearson", "spearman") if labels is None else
                     ("accuracy", "f1") if len(labels) == 2 else ("accuracy", "f1_macro"))
  return Task(source, text_fields, config.label_field, labels, metrics or default_metrics)


def _sorted_labels(raw: set[str]) -> tuple[str, ...]:
  try:
    return tuple(sorted(raw, key=float))  # numbers in numeric order
  except ValueError:
    return tuple(sorted(raw))


def load_split(task: Task, split: str, data_dir: str | None = None) -> Examples:
  """Returns the examples of `split` (train, validation or test) of `task`.

  Raises UserError naming the file and line of a label the task does not
  know, and for a missing, empty or unlabelled training file.
  """
  local = _local(task.name)
  if local is not None:
    fmt, path = local
    texts, labels = [], []
    rows = _rows(fmt, path, split, task.text_fields, task.label_field, split == "train")
    for where, text, raw in rows:
      texts.append(text)
      labels.append(None if raw is None else _label_value(task, raw, where))
    if not texts:
      raise sources.MissingSplitError(f"{task.name}: no rows for the {split} split")
    has_labels = labels[0] is not None
    return Examples(texts, _label_array(task, labels) if has_labels else None)
  return _load_tfds(task, split, data_dir)


def _label_value(task: Task, raw: str, where: str) -> float | int:
  if task.labels is None:
    try:
      return float(raw)
    except ValueError:
      raise UserError(f"{where}: label {raw!r} is not a number (a regression "
                      "task)") from None
  try:
    return task.labels.index(raw)
  except ValueError:
    raise UserError(f"{where}: unknown label {raw!r} (the task's labels: "
                    f"{', '.join(task.labels)})") from None


def _label_array(task: Task, labels) -> np.ndarray:
  return np.asarray(labels, np.float32 if task.is_regression else np.int32)


def _load_tfds(task: Task, split: str, data_dir: str | None) -> Examples:
  name = task.name
  builder = sources.tfds_builder(name, sources.data_dir_or_default(data_dir))
  tfds_split = task.splits[split]
  if tfds_split not in builder.info.splits:
    raise sources.MissingSplitError(f"{name} has no split {tfds_split!r}")
  for field in (*task.text_fields, task.label_field):
    if field not in builder.info.features:
      raise UserError(f"{name} has no field {field!r} (it has "
                      f"{', '.join(builder.info.features)})")
  texts, labels = [], []
  for example in sources.split_examples(builder, name, tfds_split):
    texts.append(tuple(_text(example[f]) for f in task.text_fields))
    labels.append(example[task.label_field])
  if not texts:
    raise sources.MissingSplitError(f"{name}: the {tfds_split} split is empty")
  labels = np.asarray(labels)
  if not task.is_regression and labels.min() < 0:  # GLUE's test splits say -1
    return Examples(texts, None)
  if not task.is_regression and labels.max() >= task.num_labels:
    raise UserError(f"{name}[{tfds_split}]: label {labels.max()} is beyond the task's "
                    f"{task.num_labels} labels")
  return Examples(texts, _label_array(task, labels))


def _text(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def local_split_of(texts: Sequence[str]) -> str:
  """The split of a row of a single local file, by a hash of its text."""
  b = builtin.bucket("\t".join(texts), 10)
  return "test" if b == 0 else "validation" if b == 1 else "train"


def _header(fmt: str, path: str) -> list[str]:
  """The column names of a local file (a JSONL file's first object's keys)."""
  if fmt == "jsonl":
    for _, record in _records(fmt, path):
      return list(record)
  else:
    for _, row in _csv_rows(fmt, path):
      return [cell.strip() for cell in row]
  raise UserError(f"{path}: empty file")


def _rows(fmt: str, path: str, split: str | None, text_fields: tuple[str, ...],
          label_field: str, need_labels: bool) -> Iterator[tuple[str, tuple, str | None]]:
  """Yields (file:line, texts, raw label or None) for the rows of `split`
  (None: every row of the file)."""
  per_split = split is not None and "{split}" in path
  file = path.replace("{split}", split) if per_split else path
  if per_split and split != "train" and not os.path.exists(file):
    return
  header = _header(fmt, file)
  has_labels = label_field in header or fmt == "jsonl"
  if need_labels and label_field not in header:
    raise UserError(f"{file}: no column {label_field!r} (columns: {', '.join(header)})")
  for field in text_fields:
    if field not in header:
      raise UserError(f"{file}: no column {field!r} (columns: {', '.join(header)})")
  count = 0
  for line, record in _records(fmt, file):
    where = f"{file}:{line}"
    texts = []
    for field in text_fields:
      if field not in record:
        raise UserError(f"{where}: no field {field!r}")
      texts.append(str(record[field]))
    texts = tuple(texts)
    if split is not None and not per_split and local_split_of(texts) != split:
      continue
    count += 1
    raw = record.get(label_field) if has_labels else None
    if raw is None and need_labels:
      raise UserError(f"{where}: no label (field {label_field!r})")
    yield where, texts, None if raw is None else str(raw).strip()
  if count == 0 and split in ("train", None):
    raise UserError(f"{file}: no examples")


def _records(fmt: str, path: str) -> Iterator[tuple[int, dict]]:
  """Yields (line number, record) of a local file: tsv and csv rows keyed by
  the header, JSONL objects."""
  if fmt != "jsonl":
    header = None
    for line, row in _csv_rows(fmt, path):
      if header is None:
        header = [cell.strip() for cell in row]
        continue
      if len(row) != len(header):
        raise UserError(f"{path}:{line}: {len(row)} columns, the header has {len(header)}")
      yield line, dict(zip(header, row))
    return
  _check_file(path)
  with open(path, encoding="utf-8") as f:
    try:
      for line, text in enumerate(f, 1):
        if not text.strip():
          continue
        try:
          record = json.loads(text)
        except json.JSONDecodeError as e:
          raise UserError(f"{path}:{line}: not JSON ({e.msg})") from None
        if not isinstance(record, dict):
          raise UserError(f"{path}:{line}: not a JSON object")
        yield line, record
    except UnicodeDecodeError as e:
      raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _csv_rows(fmt: str, path: str) -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, cells) of the non-blank rows of a tsv or csv file."""
  _check_file(path)
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" \
        else csv.reader(f)
    try:
      for row in reader:
        if any(cell.strip() for cell in row):
          yield reader.line_num, row
    except UnicodeDecodeError as e:
      raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
      raise UserError(f"{path}: {e}") from None


def _check_file(path: str) -> None:
  if os.path.isdir(path) or not os.path.exists(path):
    raise UserError(f"{path}: no such file")


def read_texts(path: str, task: Task) -> list[tuple[str, ...]]:
  """Texts to predict: a tsv:/csv:/jsonl: file with the task's text columns,
  or a plain text file with one text a line (single-text tasks)."""
  local = _local(path)
  if local is not None:
    fmt, file = local
    return [texts for _, texts, _ in _rows(fmt, file, None, task.text_fields,
                                           task.label_field, False)]
  if len(task.text_fields) != 1:
    raise UserError(f"{path}: a text-pair task reads its input from a tsv:, csv: or "
                    "jsonl: file with columns " + ", ".join(task.text_fields))
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file")
  try:
    with open(path, encoding="utf-8") as f:
      texts = [(line.rstrip("\n"),) for line in f if line.strip()]
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  if not texts:
    raise UserError(f"{path}: empty file")
  return texts


@dataclasses.dataclass
class Encoded:
  """Fixed-length model inputs of a split: [N, L] int32 arrays, labels [N]."""
  arrays: dict[str, np.ndarray]
  truncated: int  # examples that did not fit and lost their ends

  def __len__(self) -> int:
    return len(self.arrays["input_ids"])


def encode(examples: Examples, tokenizer: Tokenizer, max_seq_length: int) -> Encoded:
  """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, padded to max_seq_length.

  A pair too long loses tokens from the end of its longer text, one at a
  time (BERT's run_classifier); a single text keeps its first tokens.
  """
  n, length = len(examples), max_seq_length
  ids = np.full((n, length), PAD_ID, np.int32)
  segments = np.zeros((n, length), np.int32)
  width = len(examples.texts[0]) if n else 1
  columns = [tokenizer.encode([t[i] for t in examples.texts]) for i in range(width)]
  mask = np.zeros((n, length), np.int32)
  truncated = 0
  for row in range(n):
    parts = [list(col[row]) for col in columns]
    budget = length - 1 - len(parts)
    if sum(map(len, parts)) > budget:
      truncated += 1
      while sum(map(len, parts)) > budget:
        max(parts, key=len).pop()
    tokens, types = [CLS_ID], [0]
    for segment, part in enumerate(parts):
      tokens += part + [SEP_ID]
      types += [segment] * (len(part) + 1)
    ids[row, :len(tokens)] = tokens
    segments[row, :len(types)] = types
    mask[row, :len(tokens)] = 1
  arrays = dict(input_ids=ids, segment_ids=segments, input_mask=mask)
  if examples.labels is not None:
    arrays["labels"] = examples.labels
  return Encoded(arrays, truncated)
