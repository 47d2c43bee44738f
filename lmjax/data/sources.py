"""Where text comes from: the built-in corpora, named tfds datasets, local files.

A pretraining source is a string:
  austen                 a built-in corpus (prepared offline through tfds)
  tfds:NAME[/CONFIG]     any tensorflow-datasets dataset with a text field
  text:PATH_OR_GLOB      BERT's format: a sentence a line, blank lines between documents
  task:TASK_SOURCE       a labelled task's texts, an example a document, labels unused
                         (task:rt_polarity, task:tsv:PATH, ...: pretraining on a task's
                         own training text)
  A+B                    the documents of both (e.g. austen+rt_polarity)
Every source yields documents as lists of sentences. Local files have no
splits, so 'validation' is the documents whose text hashes into 5 of 100
buckets (none when there are fewer than 20 documents).
"""

import dataclasses
import glob
import os
import re
import types

from lmjax.data import builtin, documents, task_files, tasks
from lmjax.data.tfds_datasets import data_dir_or_default, split_examples, tfds_builder, tfds_name
from lmjax.errors import ConfigError, MissingSplitError, UserError

# A sentence ends at . ! or ? (perhaps closed by a quote or bracket) before
# whitespace and a capital or digit, unless the word is a title like "Mr.".
_SENTENCE_END = re.compile(
    r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bJr\.)"
    r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


# Local files hold out the documents hashing into 5 of 100 buckets for
# validation, but only from corpora of at least this many documents.
_MIN_DOCUMENTS_TO_SPLIT = 20


@dataclasses.dataclass
class Corpus:
  """Documents of one split, and what reading them had to skip."""
  name: str
  documents: list[list[str]]
  undecodable_lines: int = 0


def split_sentences(text: str) -> list[str]:
  """Lines, each split further at sentence ends (knowing Mr./Mrs./Dr./St.)."""
  out = []
  for line in text.splitlines():
    out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
  return out


def check_text_source(source: str) -> None:
  """UserError for a source that holds no text (a prepared directory) or
  names text files that are not there; cheap, before any work."""
  for part in source.split("+"):
    if part.startswith("prepared:"):
      raise UserError(f"{source}: a prepared directory holds token ids, not text; use "
                      "the source it was prepared from")
    if part.startswith("text:"):
      _text_files(part[len("text:"):])


def load_corpus(source: str, split: str, data_dir: str | None = None,
                text_field: str = "text") -> Corpus:
  """Returns the documents of `split` ('train' or 'validation') of `source`;
  sources joined by '+' give all their documents, in that order."""
  check_text_source(source)
  if "+" in source:
    parts = [load_corpus(s, split, data_dir, text_field) for s in source.split("+")]
    return Corpus(source, [d for p in parts for d in p.documents],
                  sum(p.undecodable_lines for p in parts))
  if source.startswith("text:"):
    return _read_text_files(source[len("text:"):], split)
  if source.startswith("task:"):
    return _read_task(source[len("task:"):], split, data_dir)
  return _read_tfds(tfds_name(source), split, data_dir_or_default(data_dir), text_field)


def _read_task(task_source: str, split: str, data_dir: str | None) -> Corpus:
  """The texts of a split of a labelled task (lmjax.data.tasks), a document
  an example: its text, or its pair's two, in sentences. The label column
  must be there (`label`), but its values are not used."""
  section = types.SimpleNamespace(source=task_source, text_fields="", label_field="label",
                                  labels="", regression=False, metrics="")
  try:
    examples = tasks.load_split(tasks.resolve_task(section, data_dir, "task"), split, data_dir)
  except MissingSplitError:
    raise
  except ConfigError as e:  # the source names no task
    raise ConfigError(f"config.data.source=task:{task_source}: {e}") from None
  except UserError as e:  # the task's files
    raise UserError(f"task:{task_source}: {e}") from None
  docs = [sentences for texts in examples.texts
          if (sentences := [s for text in texts for s in split_sentences(text)])]
  if not docs:
    raise UserError(f"task:{task_source}: no text in its {split} split")
  return Corpus(f"task:{task_source}", docs)


def _text_paths(pattern: str) -> list[str]:
  """The files a `text:` pattern names: a glob's matches, or the one path."""
  pattern = os.path.expanduser(pattern)
  return sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]


def text_split(document: list[str], total_documents: int) -> str:
  """The split of a document of local text files: validation for 5 of 100
  hash buckets, but only in corpora of at least 20 documents."""
  if total_documents < _MIN_DOCUMENTS_TO_SPLIT:
    return "train"
  return documents.hash_split("\n".join(document), *documents.DOCUMENT_SPLITS)


def _text_files(pattern: str) -> list[str]:
  """The files of a `text:` pattern; UserError when there are none or one
  named is missing."""
  paths = _text_paths(pattern)
  if not paths:
    raise UserError(f"text:{pattern}: no file matches")
  for path in paths:
    if not os.path.isfile(path):
      raise UserError(f"text:{path}: no such file")
  return paths


def _read_text_files(pattern: str, split: str) -> Corpus:
  paths = _text_files(pattern)
  read = documents.TextFile([])
  for path in paths:
    with open(path, "rb") as f:
      one = documents.read_documents(f)
    read.documents += one.documents
    read.undecodable_lines += one.undecodable_lines
    read.text_lines += one.text_lines
    read.has_text = read.has_text or one.has_text
  if not read.has_text:
    raise UserError(f"text:{pattern}: empty corpus (no text in {len(paths)} file(s))")
  if read.undecodable_lines > read.text_lines:
    raise UserError(f"text:{pattern}: {read.undecodable_lines:,} of "
                    f"{read.undecodable_lines + read.text_lines:,} lines are not UTF-8 text; "
                    "a corpus is text files")
  chosen = [d for d in read.documents if text_split(d, len(read.documents)) == split]
  if not chosen:
    raise MissingSplitError(f"text:{pattern}: {len(read.documents)} documents are too few "
                            f"for a {split} split (need {_MIN_DOCUMENTS_TO_SPLIT})")
  return Corpus(f"text:{pattern}", chosen, read.undecodable_lines)


def checked_tfds_builder(name: str, split: str, data_dir: str, text_field: str):
  """The prepared builder of `name`, which has `split` and `text_field`."""
  builder = tfds_builder(name, data_dir)
  if split not in builder.info.splits:
    raise MissingSplitError(f"tfds:{name} has no split {split!r} (it has "
                            f"{', '.join(builder.info.splits)})")
  if text_field not in builder.info.features:
    raise UserError(f"tfds:{name} has no field {text_field!r} (it has "
                    f"{', '.join(builder.info.features)})")
  return builder


def example_sentences(example: dict, name: str, text_field: str) -> list[str]:
  """The sentences of a tfds example's text field: the built-ins are stored
  a sentence a line; other text is split at sentence ends."""
  text = example[text_field]
  text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
  if name in builtin.VERSIONS:
    return [s.strip() for s in text.splitlines() if s.strip()]
  return split_sentences(text)


def _read_tfds(name: str, split: str, data_dir: str, text_field: str) -> Corpus:
  builder = checked_tfds_builder(name, split, data_dir, text_field)
  documents = []
  for example in split_examples(builder, name, split):
    sentences = example_sentences(example, name, text_field)
    if sentences:
      documents.append(sentences)
  if not documents:
    raise UserError(f"tfds:{name}[{split}]: no sentences in field {text_field!r}")
  return Corpus(f"tfds:{name}", documents)


def corpus_key(source: str, split: str, data_dir: str | None = None,
               text_field: str = "text") -> str:
  """A string that changes whenever the corpus `load_corpus` returns would:
  file paths with sizes and mtimes, or the tfds name, version and directory."""
  if "+" in source:
    return "+".join(corpus_key(s, split, data_dir, text_field) for s in source.split("+"))
  if source.startswith("text:"):
    stamps = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns)
              for p in _text_paths(source[len("text:"):]) if os.path.isfile(p)]
    return f"{source}|{split}|{stamps}"
  if source.startswith("task:"):
    local = task_files.parse_source(source[len("task:"):])
    if local is None:  # a built-in or tfds task
      name = source[len("task:"):]
      return f"{source}|{builtin.VERSIONS.get(name, '')}|{split}|{data_dir_or_default(data_dir)}"
    files = {local[1].replace("{split}", s) for s in ("train", split)}
    stamps = [(p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in sorted(files)
              if os.path.isfile(p)]
    return f"{source}|{split}|{stamps}"
  name = tfds_name(source)
  version = builtin.VERSIONS.get(name, "")
  return f"tfds:{name}|{version}|{split}|{data_dir_or_default(data_dir)}|{text_field}"
