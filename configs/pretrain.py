"""Pretraining configs: `--config=configs/pretrain.py[:variant]`.

Every field can be overridden on the command line, e.g.
`--config.data.source=text:corpus.txt --config.data.max_seq_length=64`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config of `arg`: '' (default), 'base' or 'large'."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict(dict(
      source="austen",  # austen | tfds:NAME[/CONFIG] | text:PATH_OR_GLOB
      text_field="text",  # the text feature of a tfds source
      tokenizer="",  # a sentencepiece .model; '' = the built-in austen tokenizer
      data_dir="",  # tfds data directory; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      cache_dir="",  # tokenized-corpus cache; '' = $LMJAX_CACHE or ~/.cache/lmjax
      max_seq_length=128,
      max_predictions_per_seq=20,
      masked_lm_prob=0.15,
      short_seq_prob=0.1,
      whole_word_masking=False,
      num_threads=2,  # host threads that prepare batches
  ))

  config.train = ml_collections.ConfigDict(dict(
      batch_size=32,  # global batch, split over processes
  ))

  variant = arg or ""
  if variant in ("base", "large"):
    config.train.batch_size = 256
  elif variant:
    raise ValueError(f"unknown pretrain config variant {variant!r} (use base or large)")
  return config
