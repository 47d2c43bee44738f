"""Documents of sentences: BERT's plain-text corpus format, and splits by a
hash of the content.

BERT's format is one sentence a line with blank lines between documents. A
split by content hash puts a text in the same split whatever the order or
the other rows of its file, so it is stable across runs and machines.
"""

import dataclasses
import hashlib
from collections.abc import Iterable


def bucket(text: str, buckets: int = 100) -> int:
  """A stable bucket in [0, buckets) for `text`."""
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % buckets


def hash_split(text: str, held_out: tuple[tuple[str, int], ...], buckets: int) -> str:
  """The split of `text`: the first of `held_out`'s (name, bucket count) whose
  buckets its hash falls in, counted from bucket 0; otherwise 'train'."""
  b = bucket(text, buckets)
  for name, count in held_out:
    if b < count:
      return name
    b -= count
  return "train"


# 5 of 100 buckets validate: a corpus of documents.
DOCUMENT_SPLITS = (("validation", 5),), 100
# 1 of 10 tests, 1 of 10 validates: a file of labelled examples.
EXAMPLE_SPLITS = (("test", 1), ("validation", 1)), 10


@dataclasses.dataclass
class TextFile:
  """The documents of BERT-format text, and what reading it had to skip."""
  documents: list[list[str]]
  undecodable_lines: int = 0
  text_lines: int = 0  # lines of text that decoded
  has_text: bool = False  # any line that is not blank, decodable or not


def read_documents(lines: Iterable[bytes]) -> TextFile:
  """Reads BERT's format from raw lines; undecodable lines are skipped and
  counted. A document never spans two calls (files)."""
  out, current = TextFile([]), []
  for raw in lines:
    out.has_text = out.has_text or bool(raw.strip())
    try:
      line = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
      out.undecodable_lines += 1
      continue
    if line:
      current.append(line)
      out.text_lines += 1
    elif current:
      out.documents.append(current)
      current = []
  if current:
    out.documents.append(current)
  return out
