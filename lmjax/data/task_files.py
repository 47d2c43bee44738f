"""Readers of local labelled files: tsv and csv with a header, and JSONL.

A local source is `tsv:PATH`, `csv:PATH` or `jsonl:PATH`. PATH may hold
`{split}` to name one file per split (train, validation, test); without it,
one file is split by a hash of each row's text (documents.EXAMPLE_SPLITS).
Every mistake in a file is a UserError naming the file (and line).
"""

import csv
import json
import os
from collections.abc import Iterator

from lmjax.data import documents
from lmjax.errors import UserError

FORMATS = ("tsv", "csv", "jsonl")

# (file:line, texts, raw label or None) of one row.
Row = tuple[str, tuple[str, ...], str | None]


def parse_source(source: str) -> tuple[str, str] | None:
  """(format, path) of a local source, or None when it is not one."""
  fmt, sep, path = source.partition(":")
  return (fmt, os.path.expanduser(path)) if sep and fmt in FORMATS else None


def split_of(texts: tuple[str, ...]) -> str:
  """The split of a row of a single local file, by a hash of its text."""
  return documents.hash_split("\t".join(texts), *documents.EXAMPLE_SPLITS)


def header(fmt: str, path: str) -> list[str]:
  """The column names of a local file (a JSONL file's first object's keys)."""
  if fmt == "jsonl":
    for _, record in _records(fmt, path):
      return list(record)
  else:
    for _, row in _csv_rows(fmt, path):
      return [cell.strip() for cell in row]
  raise UserError(f"{path}: empty file")


def _check_columns(file: str, columns: list[str], wanted) -> None:
  for field in wanted:
    if field not in columns:
      raise UserError(f"{file}: no column {field!r} (columns: {', '.join(columns)})")


def rows(fmt: str, path: str, split: str | None, text_fields: tuple[str, ...],
         label_field: str, need_labels: bool) -> Iterator[Row]:
  """Yields the rows of `split` (None: every row of the file)."""
  per_split = split is not None and "{split}" in path
  file = path.replace("{split}", split) if per_split else path
  if per_split and split != "train" and not os.path.exists(file):
    return
  columns = header(fmt, file)
  has_labels = label_field in columns or fmt == "jsonl"
  _check_columns(file, columns, (*text_fields, *([label_field] if need_labels else [])))
  count = 0
  for line, record in _records(fmt, file):
    where = f"{file}:{line}"
    missing = [field for field in text_fields if field not in record]
    if missing:
      raise UserError(f"{where}: no field {missing[0]!r}")
    texts = tuple(str(record[field]) for field in text_fields)
    if split is not None and not per_split and split_of(texts) != split:
      continue
    count += 1
    raw = record.get(label_field) if has_labels else None
    if raw is None and need_labels:
      raise UserError(f"{where}: no label (field {label_field!r})")
    yield where, texts, None if raw is None else str(raw).strip()
  if count == 0 and split in ("train", None):
    raise UserError(f"{file}: no examples")


def _records(fmt: str, path: str) -> Iterator[tuple[int, dict]]:
  """Yields (line number, record): tsv and csv rows keyed by the header,
  JSONL objects."""
  if fmt == "jsonl":
    yield from _json_records(path)
    return
  columns = None
  for line, row in _csv_rows(fmt, path):
    if columns is None:
      columns = [cell.strip() for cell in row]
      continue
    if len(row) != len(columns):
      raise UserError(f"{path}:{line}: {len(row)} columns, the header has {len(columns)}")
    yield line, dict(zip(columns, row, strict=True))


def _json_records(path: str) -> Iterator[tuple[int, dict]]:
  for line, text in _text_lines(path):
    if not text.strip():
      continue
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}:{line}: not JSON ({e.msg})") from None
    if not isinstance(record, dict):
      raise UserError(f"{path}:{line}: not a JSON object")
    yield line, record


def _text_lines(path: str) -> Iterator[tuple[int, str]]:
  """(line number, line) of a UTF-8 file."""
  check_file(path)
  with open(path, encoding="utf-8") as f:
    try:
      yield from enumerate(f, 1)
    except UnicodeDecodeError as e:
      raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _csv_rows(fmt: str, path: str) -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, cells) of the non-blank rows of a tsv or csv file."""
  check_file(path)
  with open(path, encoding="utf-8", newline="") as f:
    reader = (csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv"
              else csv.reader(f))
    try:
      for row in reader:
        if any(cell.strip() for cell in row):
          yield reader.line_num, row
    except UnicodeDecodeError as e:
      raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
      raise UserError(f"{path}: {e}") from None


def check_file(path: str) -> None:
  if os.path.isdir(path) or not os.path.exists(path):
    raise UserError(f"{path}: no such file")


def read_texts(path: str, text_fields: tuple[str, ...],
               label_field: str) -> list[tuple[str, ...]]:
  """Texts to predict: a tsv:/csv:/jsonl: file with the text columns, or a
  plain text file with one text a line (single-text tasks)."""
  local = parse_source(path)
  if local is not None:
    fmt, file = local
    return [texts for _, texts, _ in rows(fmt, file, None, text_fields, label_field, False)]
  if len(text_fields) != 1:
    raise UserError(f"{path}: a text-pair task reads its input from a tsv:, csv: or "
                    "jsonl: file with columns " + ", ".join(text_fields))
  texts = [(line.rstrip("\n"),) for _, line in _text_lines(path) if line.strip()]
  if not texts:
    raise UserError(f"{path}: empty file")
  return texts
