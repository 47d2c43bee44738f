"""Text sources: the built-in tfds corpora, local files, bad input."""

import gzip

import numpy as np
import pytest

from lmjax.data import builtin, sources, tfds_datasets
from lmjax.errors import UserError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_austen_is_prepared_offline_and_split_by_document(data_dir):
  train = sources.load_corpus("austen", "train", data_dir)
  validation = sources.load_corpus("tfds:austen", "validation", data_dir)
  assert len(train.documents) + len(validation.documents) == 270
  assert 5 <= len(validation.documents) <= 30
  assert sum(map(len, train.documents)) + sum(map(len, validation.documents)) == 31338
  seen = {d[0] for d in train.documents}
  assert not any(d[0] in seen for d in validation.documents)
  again = sources.load_corpus("austen", "validation", data_dir)
  assert again.documents == validation.documents


def test_rt_polarity_is_deduplicated_and_split_by_text(data_dir):
  builder = tfds_datasets.tfds_builder("rt_polarity", data_dir)
  splits = {s: list(builder.as_data_source(s)) for s in ("train", "validation", "test")}
  texts = [e["text"] for rows in splits.values() for e in rows]
  assert len(texts) == len(set(texts)) == 12808 - 56
  assert 0.07 < len(splits["test"]) / len(texts) < 0.13
  assert {e["label"] for e in splits["train"]} == {0, 1}
  with gzip.open(builtin.RT_POLARITY_FILE, "rt") as f:
    first_label, _, first_text = f.readline().rstrip("\n").partition("\t")
  match = [e for rows in splits.values() for e in rows if e["text"].decode() == first_text]
  assert builder.info.features["label"].int2str(match[0]["label"]) == first_label


def test_text_files_use_berts_format(tmp_path):
  (tmp_path / "a.txt").write_text("One.\nTwo.\n\n\nThree.\n")
  (tmp_path / "b.txt").write_text("Four.\n")
  corpus = sources.load_corpus(f"text:{tmp_path}/*.txt", "train")
  assert sorted(corpus.documents) == [["Four."], ["One.", "Two."], ["Three."]]
  with pytest.raises(UserError, match="too few for a validation split"):
    sources.load_corpus(f"text:{tmp_path}/*.txt", "validation")


def test_text_validation_split_is_stable_and_disjoint(tmp_path):
  (tmp_path / "c.txt").write_text("\n\n".join(f"Doc {i} line one.\nDoc {i} line two."
                                              for i in range(400)))
  train = sources.load_corpus(f"text:{tmp_path}/c.txt", "train").documents
  validation = sources.load_corpus(f"text:{tmp_path}/c.txt", "validation").documents
  assert len(train) + len(validation) == 400 and 5 <= len(validation) <= 40
  assert not {d[0] for d in train} & {d[0] for d in validation}


def test_undecodable_lines_are_skipped_and_counted(tmp_path):
  path = tmp_path / "c.txt"
  path.write_bytes(b"Good line.\n\xff\xfe bad bytes\nAnother good line.\n")
  corpus = sources.load_corpus(f"text:{path}", "train")
  assert corpus.documents == [["Good line.", "Another good line."]]
  assert corpus.undecodable_lines == 1


@pytest.mark.parametrize("content,message", [
    (b"", "empty corpus"), (b"\n \n\t\n", "empty corpus"),
    (b"\xff\xfe\n\xfa\n", "2 of 2 lines are not UTF-8 text")])
def test_empty_corpora_are_errors(tmp_path, content, message):
  path = tmp_path / "c.txt"
  path.write_bytes(content)
  with pytest.raises(UserError, match=message):
    sources.load_corpus(f"text:{path}", "train")


def test_missing_files_and_unknown_datasets(tmp_path, data_dir):
  with pytest.raises(UserError, match="no such file"):
    sources.load_corpus(f"text:{tmp_path}/none.txt", "train")
  with pytest.raises(UserError, match="no file matches"):
    sources.load_corpus(f"text:{tmp_path}/*.none", "train")
  with pytest.raises(UserError, match="unknown dataset"):
    sources.load_corpus("tfds:no_such_dataset_xyz", "train", data_dir)
  with pytest.raises(UserError, match="no field 'body'"):
    sources.load_corpus("austen", "train", data_dir, text_field="body")


def test_sentence_splitting_knows_titles():
  assert sources.split_sentences('Mr. Darcy came. He said "Yes." Then left!\nNew') == [
      "Mr. Darcy came.", 'He said "Yes."', "Then left!", "New"]


def test_tfrecord_datasets_need_tensorflow(monkeypatch):
  import importlib.util  # pylint: disable=import-outside-toplevel
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorflow" else real_find_spec(name, *a))

  class Info:
    file_format = "tfrecord"

  class Builder:
    info = Info()

  with pytest.raises(UserError, match="pip install tensorflow-cpu"):
    tfds_datasets.split_examples(Builder(), "wiki40b/en", "train")  # pylint: disable=protected-access


def test_sources_joined_by_plus_give_the_documents_of_both(data_dir, tmp_path):
  notes = tmp_path / "notes.txt"
  notes.write_text("First note.\nSecond line.\n\nAnother note.\n")
  joined = sources.load_corpus(f"rt_polarity+text:{notes}", "train", data_dir)
  reviews = sources.load_corpus("rt_polarity", "train", data_dir)
  assert len(reviews.documents) == 10190
  assert joined.documents == reviews.documents + [["First note.", "Second line."],
                                                  ["Another note."]]
  key = sources.corpus_key(f"rt_polarity+text:{notes}", "train", data_dir)
  assert key.startswith(sources.corpus_key("rt_polarity", "train", data_dir) + "+")


def test_bytes_that_are_mostly_not_text_are_refused(tmp_path):
  rng = np.random.default_rng(0)
  (tmp_path / "noise.txt").write_bytes(rng.integers(0, 256, 100_000, np.uint8).tobytes())
  with pytest.raises(UserError, match=r"lines are not UTF-8 text; a corpus is text files"):
    sources.load_corpus(f"text:{tmp_path}/noise.txt", "train")


def test_preparing_a_builtin_corpus_says_one_line_and_no_download(tmp_path, capfd):
  builder = tfds_datasets.tfds_builder("austen", str(tmp_path))
  assert builder.is_prepared()
  out, err = capfd.readouterr()
  assert out.strip() == (f"preparing built-in dataset austen in {tmp_path} (once, from the "
                         "text packaged with lmjax)")
  assert "Downloading" not in out + err and "dataset_info" not in err and "%|" not in err


def test_a_tasks_texts_are_a_corpus_an_example_a_document(tmp_path, data_dir):
  rows = [f"A fine film {i}. It moves.\tpos" if i % 2 else f"A dull one {i}.\tneg"
          for i in range(60)]
  task = tmp_path / "reviews.tsv"
  task.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
  train = sources.load_corpus(f"task:tsv:{task}", "train")
  validation = sources.load_corpus(f"task:tsv:{task}", "validation")
  assert train.name == f"task:tsv:{task}"
  assert 40 <= len(train.documents) < 60 and validation.documents  # the task's own splits
  odd = next(d for d in train.documents if d[0].startswith("A fine"))
  assert len(odd) == 2 and odd[1] == "It moves."  # one example, its sentences
  assert not {tuple(d) for d in train.documents} & {tuple(d) for d in validation.documents}
  key = sources.corpus_key(f"task:tsv:{task}", "train")
  task.write_text("text\tlabel\n" + "\n".join(rows[:50]) + "\n")
  assert sources.corpus_key(f"task:tsv:{task}", "train") != key
  builtin_task = sources.load_corpus("task:rt_polarity", "train", str(data_dir))
  assert len(builtin_task.documents) > 9000  # rt_polarity's training snippets
  with pytest.raises(UserError, match="task:tsv:/no/such.tsv: "):
    sources.load_corpus("task:tsv:/no/such.tsv", "train")
  with pytest.raises(UserError, match="task:sst: "):
    sources.load_corpus("task:sst", "train")
