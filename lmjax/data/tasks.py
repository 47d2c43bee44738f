"""Labelled tasks for fine-tuning: what a task is, its examples, and their
fixed-length encoding.

A task source is a string:
  rt_polarity                      the built-in Rotten Tomatoes sentiment task
  glue/NAME                        a GLUE task from tensorflow-datasets: cola, sst2,
                                   mrpc, qqp, stsb, mnli, qnli, rte, wnli
  tsv:PATH  csv:PATH  jsonl:PATH   local files (lmjax.data.task_files)
A split without labels (a GLUE test split, a test file without a label
column) is for prediction only.
"""

import dataclasses
import types

import numpy as np

from lmjax.data import task_files, tfds_datasets
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import ConfigError, MissingSplitError, UserError

SPLITS = ("train", "validation", "test")

# The columns a local file's text is taken from when the config names none,
# the first that the header has: pairs first, then single texts.
_DEFAULT_TEXT_FIELDS = (("sentence1", "sentence2"), ("text_a", "text_b"),
                        ("premise", "hypothesis"), ("question1", "question2"),
                        ("question", "sentence"), ("text",), ("sentence",))


@dataclasses.dataclass(frozen=True)
class Task:
  """What a task's examples look like and how it is scored.

  `labels` are the class names in index order; None makes a regression task.
  `metrics` come from lmjax.train.task_metrics.METRICS; the first is the main one.
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


def split_names(fields: str) -> tuple[str, ...]:
  return tuple(f.strip() for f in fields.split(",") if f.strip())


def resolve_task(config, data_dir: str | None = None, section: str = "config.task") -> Task:
  """The Task of a config's `task` section: a known task's definition, or a
  local file's, with columns, labels and metrics from the config (labels
  default to the sorted labels of the train split). ConfigError names a
  field as `section.FIELD`; UserError is a file's problem."""
  source, metrics = config.source, split_names(config.metrics)
  if source == "rt_polarity":
    return Task("rt_polarity", ("text",), "label", ("rotten", "fresh"),
                metrics or ("accuracy", "f1"))
  if source.startswith("glue/"):
    name = source[len("glue/"):]
    if name not in GLUE:
      raise ConfigError(f"{section}.source: unknown GLUE task {name!r} (one of "
                        f"{', '.join(GLUE)})")
    fields, labels, task_metrics = GLUE[name]
    splits = ({"train": "train", "validation": "validation_matched", "test": "test_matched"}
              if name == "mnli" else {s: s for s in SPLITS})
    return Task(source, fields, "label", labels, metrics or task_metrics, splits)
  local = task_files.parse_source(source)
  if local is None:
    raise ConfigError(f"{section}.source {source!r} is not rt_polarity, glue/NAME, "
                      "tsv:PATH, csv:PATH or jsonl:PATH")
  fmt, path = local
  train_file = path.replace("{split}", "train")
  header = task_files.header(fmt, train_file)
  text_fields = split_names(config.text_fields) or next(
      (f for f in _DEFAULT_TEXT_FIELDS if set(f) <= set(header)), None)
  if text_fields is None:
    raise UserError(f"{train_file}: no text column among {', '.join(header)}; name it "
                    f"with --{section}.text_fields=COLUMN[,PAIR_COLUMN]")
  if len(text_fields) > 2:
    raise ConfigError(f"{section}.text_fields names {len(text_fields)} columns; "
                      "a task has one text or a pair")
  for field in (*text_fields, config.label_field):
    if field not in header:
      raise UserError(f"{train_file}: no column {field!r} (columns: {', '.join(header)})")
  if config.regression:
    labels = None
  elif config.labels:
    labels = split_names(config.labels)
  else:
    labels = _sorted_labels({raw for _, _, raw in task_files.rows(
        fmt, path, "train", text_fields, config.label_field, True)})
  if labels is not None and len(labels) < 2:
    raise UserError(f"{train_file}: a classification task needs at least 2 labels, "
                    f"found {list(labels)}")
  default_metrics = (("pearson", "spearman") if labels is None else
                     ("accuracy", "f1") if len(labels) == 2 else ("accuracy", "f1_macro"))
  return Task(source, text_fields, config.label_field, labels, metrics or default_metrics)


def task_of(source: str, text_fields: str = "", label_field: str = "label", labels: str = "",
            regression: bool = False, metrics: str = "", data_dir: str | None = None) -> Task:
  """The Task of `source` (rt_polarity, glue/NAME, tsv:PATH, ...), the
  task section's fields given as arguments: a research script's way in."""
  fields = types.SimpleNamespace(source=source, text_fields=text_fields,
                                 label_field=label_field, labels=labels,
                                 regression=regression, metrics=metrics)
  return resolve_task(fields, data_dir, section="task")


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
  local = task_files.parse_source(task.name)
  if local is not None:
    fmt, path = local
    texts, labels = [], []
    rows = task_files.rows(fmt, path, split, task.text_fields, task.label_field,
                           split == "train")
    for where, text, raw in rows:
      texts.append(text)
      labels.append(None if raw is None else _label_value(task, raw, where))
    if not texts:
      raise MissingSplitError(f"{task.name}: no rows for the {split} split")
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
  builder = tfds_datasets.tfds_builder(name, tfds_datasets.data_dir_or_default(data_dir))
  tfds_split = task.splits[split]
  if tfds_split not in builder.info.splits:
    raise MissingSplitError(f"{name} has no split {tfds_split!r}")
  for field in (*task.text_fields, task.label_field):
    if field not in builder.info.features:
      raise UserError(f"{name} has no field {field!r} (it has "
                      f"{', '.join(builder.info.features)})")
  texts, labels = [], []
  for example in tfds_datasets.split_examples(builder, name, tfds_split):
    texts.append(tuple(_text(example[f]) for f in task.text_fields))
    labels.append(example[task.label_field])
  if not texts:
    raise MissingSplitError(f"{name}: the {tfds_split} split is empty")
  labels = np.asarray(labels)
  if not task.is_regression and labels.min() < 0:  # GLUE's test splits say -1
    return Examples(texts, None)
  if not task.is_regression and labels.max() >= task.num_labels:
    raise UserError(f"{name}[{tfds_split}]: label {labels.max()} is beyond the task's "
                    f"{task.num_labels} labels")
  return Examples(texts, _label_array(task, labels))


def _text(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def read_texts(path: str, task: Task) -> list[tuple[str, ...]]:
  """Texts to predict with `task`'s model (see task_files.read_texts)."""
  return task_files.read_texts(path, task.text_fields, task.label_field)


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
  special = tokenizer.special
  ids = np.full((n, length), special.pad, np.int32)
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
    tokens, types = [special.cls], [0]
    for segment, part in enumerate(parts):
      tokens += part + [special.sep]
      types += [segment] * (len(part) + 1)
    ids[row, :len(tokens)] = tokens
    segments[row, :len(types)] = types
    mask[row, :len(tokens)] = 1
  arrays = dict(input_ids=ids, segment_ids=segments, input_mask=mask)
  if examples.labels is not None:
    arrays["labels"] = examples.labels
  return Encoded(arrays, truncated)
