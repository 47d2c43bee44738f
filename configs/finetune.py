"""Fine-tuning configs: `--config=configs/finetune.py`.

The default fine-tunes the encoder of the default pretraining run
(runs/pretrain) on the built-in rt_polarity sentiment task; `:transfer` is
the recipe for a small encoder pretrained on a task's own text. Every field can be
overridden on the command line, e.g. `--config.task.source=glue/sst2` or
`--config.init.source=hf:/path/to/bert`.
"""

import ml_collections

from lmjax import config_sections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "transfer"):
    raise ValueError(f"unknown finetune config variant {arg!r} (use transfer)")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.mode = "train"  # train | predict (with config.predict.input)

  config.init = ml_collections.ConfigDict(dict(
      # pretrain:DIR: a pretraining workdir's newest checkpoint; hf:DIR: a Hugging Face
      # BERT directory (config.json, weights, and its tokenizer unless task.tokenizer
      # names one); random: random weights of model.size
      source="pretrain:runs/pretrain",  # pretrain:DIR | hf:DIR | random
  ))

  config.task = ml_collections.ConfigDict(dict(
      source="rt_polarity",  # rt_polarity | glue/NAME | tsv:PATH | csv:PATH | jsonl:PATH
      text_fields="",  # local files: COLUMN or COLUMN,PAIR_COLUMN; '' = text, sentence, ...
      label_field="label",
      labels="",  # local files: class names in order, comma-separated; '' = those of train
      regression=False,  # local files: the label is a score
      metrics="",  # comma-separated, main first; '' = the task's own
      max_seq_length=128,  # longer examples are truncated (and counted)
      packing=True,  # several examples a row: no compute on padding, the same results
      packed_length=ml_collections.config_dict.placeholder(int),  # rows; None = max_seq_length
      length_buckets=4,  # packing off: batches pad to the shortest of this many lengths
      group_by_length=0,  # N: batches of one bucket, from windows of N batches (faster); 0 = off
      tokenizer="",  # only for init.source=random, or a checkpoint without a tokenizer
      data_dir="",  # tfds data directory; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      num_threads=2,  # host threads that prepare batches
  ))

  # Architecture fields (size, max_position) apply to init.source=random only; the
  # others also apply to a pretrained encoder.
  config.model = config_sections.model()

  config.train = ml_collections.ConfigDict(dict(
      batch_size=32,
      epochs=5.0,
      steps=0,  # > 0 overrides epochs
      # None: 5e-4 for encoders up to 256 wide (tiny, mini), 1e-4 up to 512, 3e-5 wider
      **config_sections.optimizer(learning_rate=ml_collections.config_dict.placeholder(float)),
      warmup_fraction=0.1,
      log_every=50,
      eval_every=0,  # 0 = once an epoch
      checkpoint_every=0,  # 0 = at every evaluation
      keep_checkpoints=1,
      eval_batch_size=128,
      cpu_peak_tflops=0.2,  # for MFU on CPU hosts; accelerators use known peaks
      profile_steps="",  # START,END: a jax.profiler trace of those steps in DIR/profile
      stall_timeout_s=1800.0,  # several processes: a phase (step, eval, save) longer stops all
  ))

  config.predict = ml_collections.ConfigDict(dict(
      input="",  # a text file (one text a line) or tsv:/csv:/jsonl:PATH
      output="",  # '' = DIR/predictions.jsonl
  ))

  config.mesh = config_sections.mesh()
  if arg == "transfer":
    # Fine-tuning a small encoder on a few thousand examples (the transfer experiment).
    config.train.update(learning_rate=5e-4, epochs=5.0)
  return config
