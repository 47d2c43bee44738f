"""tensorflow-datasets for lmjax: builders of prepared datasets (the
built-ins prepared on first use), their splits read without TensorFlow where
the storage allows, and the default data directory. Pretraining sources and
fine-tuning tasks both read tfds through this module."""

import contextlib
import importlib.util
import io
import os
from pathlib import Path

from absl import logging

from lmjax.data import builtin
from lmjax.errors import UserError, first_line


def data_dir_or_default(data_dir: str | None) -> str:
  return data_dir or os.environ.get("TFDS_DATA_DIR") or str(
      Path.home() / "tensorflow_datasets")


def tfds_name(source: str) -> str:
  """The dataset name of a tfds or built-in source."""
  return source[len("tfds:"):] if source.startswith("tfds:") else source


@contextlib.contextmanager
def _quiet_tfds(tfds):
  """tfds without its progress bars, prints and warnings (errors still show)."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.enable_progress_bar()
    logging.set_verbosity(verbosity)


def tfds_builder(name: str, data_dir: str):
  """Returns a prepared tfds builder: built-ins are prepared on first use."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if name in builtin.VERSIONS:
    with _quiet_tfds(tfds):  # its download talk does not fit packaged text
      builder = builtin.builder(name, data_dir)
      prepared = builder.is_prepared()
    if not prepared:
      print(f"preparing built-in dataset {name} in {data_dir} (once, from the text "
            "packaged with lmjax)", flush=True)
      with _quiet_tfds(tfds):
        try:
          builder.download_and_prepare(file_format="array_record")
        except FileExistsError:  # another process of the job prepared it first
          builder = builtin.builder(name, data_dir)
    return builder
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names
    raise UserError(f"tfds:{name}: unknown dataset, or not prepared under {data_dir} "
                    f"({first_line(e)}); prepare it once where the data can be "
                    f"downloaded (tfds build {name} --data_dir={data_dir})") from None
  if not builder.is_prepared():
    raise UserError(f"tfds:{name}: not prepared under {data_dir}; prepare it "
                    f"once where the data can be downloaded (tfds build {name} "
                    f"--data_dir={data_dir} --file_format=array_record)")
  return builder


def split_examples(builder, name: str, split: str):
  """Iterates a split: array_record through tfds' data source (no
  TensorFlow); tfrecord only through TensorFlow, when it is installed."""
  if "array_record" in str(builder.info.file_format).lower():
    return builder.as_data_source(split)
  if importlib.util.find_spec("tensorflow") is None:
    raise UserError(f"tfds:{name} is stored as tfrecord, which needs TensorFlow: "
                    "pip install tensorflow-cpu")
  return builder.as_dataset(split=split).as_numpy_iterator()
