"""Trains a SentencePiece tokenizer with lmjax's special tokens.

  python -m lmjax.tokenizer --source=text:corpus.txt --vocab_size=8000 \\
      --output=corpus.model
"""

from absl import flags

from lmjax import cli
from lmjax.data import sources, tokenization

_SOURCE = flags.DEFINE_string("source", "austen", "text source (see lmjax.data.sources)")
_VOCAB = flags.DEFINE_integer("vocab_size", 8000, "number of pieces")
_OUTPUT = flags.DEFINE_string("output", None, "where to write the .model file")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data directory")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "text field of a tfds source")


def main(argv):
  del argv
  cli.require(_OUTPUT)
  tokenization.check_output(_OUTPUT.value)
  corpus = sources.load_corpus(_SOURCE.value, "train", _DATA_DIR.value,
                               _TEXT_FIELD.value)
  print(f"{corpus.name}: {len(corpus.documents):,} documents", flush=True)
  tokenization.train((s for d in corpus.documents for s in d), _VOCAB.value,
                  _OUTPUT.value, progress=lambda m: print(m, flush=True))


if __name__ == "__main__":
  cli.run(main)
