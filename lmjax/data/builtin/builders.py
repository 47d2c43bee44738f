"""tensorflow-datasets builders of the built-in corpora."""

import gzip

import tensorflow_datasets as tfds

from lmjax.data import builtin, documents


class Austen(tfds.core.GeneratorBasedBuilder):
  """Jane Austen's novels: one document per chapter, sentences joined by '\\n'.

  Split by a hash of each chapter's text: about 5% validation.
  """

  VERSION = tfds.core.Version(builtin.VERSIONS["austen"])

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with lmjax
    with gzip.open(builtin.AUSTEN_FILE, "rb") as f:
      chapters = documents.read_documents(f).documents
    return {split: self._generate_examples(chapters, split)
            for split in ("train", "validation")}

  def _generate_examples(self, chapters, split):
    for i, chapter in enumerate(chapters):
      text = "\n".join(chapter)
      if documents.hash_split(text, *documents.DOCUMENT_SPLITS) == split:
        yield i, {"text": text}


class RtPolarity(tfds.core.GeneratorBasedBuilder):
  """Rotten Tomatoes snippets labelled rotten (0) / fresh (1), duplicates removed.

  Split by a hash of the text: about 80% train, 10% validation, 10% test.
  """

  VERSION = tfds.core.Version(builtin.VERSIONS["rt_polarity"])

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
    with gzip.open(builtin.RT_POLARITY_FILE, "rt", encoding="utf-8") as f:
      for line in f:
        label, _, text = line.rstrip("\n").partition("\t")
        if text and text not in seen:
          seen.add(text)
          rows.append((text, label))
    return {split: self._generate_examples(rows, split)
            for split in ("train", "validation", "test")}

  def _generate_examples(self, rows, split):
    for i, (text, label) in enumerate(rows):
      if documents.hash_split(text, *documents.EXAMPLE_SPLITS) == split:
        yield i, {"text": text, "label": label}


BUILDERS = {"austen": Austen, "rt_polarity": RtPolarity}
