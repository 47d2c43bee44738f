"""Pretraining configs: `--config=configs/pretrain.py[:variant]`.

Every field can be overridden on the command line, e.g.
`--config.data.source=text:corpus.txt --config.data.max_seq_length=64`.
"""

import ml_collections

from lmjax import config_sections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config of `arg`.

  '' (default): BERT-tiny on the built-in Austen corpus, about three minutes on
  a 2-core CPU. 'base' / 'large': BERT's sizes and recipe, for accelerators.
  'transfer': pretraining on a task's own text (data.source=task:SOURCE),
  about 15 minutes on a 2-core CPU, as the transfer experiment runs it.
  'modernbert': ModernBERT-tiny with MLM alone at 30% masking.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.init = ml_collections.ConfigDict(dict(
      # hf:DIR: continued pretraining with its sizes and vocabulary (heads it lacks start random)
      source="random",  # random (model.architecture and size) | hf:DIR (a Hugging Face directory)
  ))

  config.model = config_sections.model()

  config.data = ml_collections.ConfigDict(dict(
      # A+B: the documents of both; task:SOURCE: a labelled task's texts, labels unused.
      source="austen",  # austen | tfds:NAME[/CONFIG] | text:GLOB | task:SOURCE | prepared:DIR
      text_field="text",  # the text feature of a tfds source
      tokenizer="",  # a file or dir; learn:N = learned from source; '' = init.source's or built-in
      data_dir="",  # tfds data directory; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      cache_dir="",  # tokenized-corpus cache; '' = $LMJAX_CACHE or ~/.cache/lmjax
      max_seq_length=128,
      max_predictions_per_seq=20,
      masked_lm_prob=0.15,
      # the rate evaluations mask at; None = masked_lm_prob (MosaicBERT trains at
      # 0.3 and evaluates at 0.15, so that eval losses compare across rates)
      eval_masked_lm_prob=ml_collections.config_dict.placeholder(float),
      short_seq_prob=0.1,
      whole_word_masking=False,
      packing=True,  # pairs share rows: no compute on padding (false: one a row)
      # Steps whose pairs are packed together: denser rows, each step's pairs a
      # little more or less than batch_size; 1 = each step exactly its own pairs.
      packing_window=8,
      num_threads=2,  # host threads that prepare batches
  ))

  config.train = ml_collections.ConfigDict(dict(
      batch_size=32,  # global batch, split over processes
      steps=1200,
      # Minutes of training: the steps they afford are measured at the start and
      # replace `steps` (recorded in DIR/config.json); None = `steps` alone.
      budget_minutes=ml_collections.config_dict.placeholder(float),
      # NSP learns at this peak and warm-up; at 2e-3 (with 120 steps of warm-up)
      # its loss stayed at ln 2, as transformers' BERT's does at that rate.
      **config_sections.optimizer(learning_rate=1e-3),
      warmup_steps=300,
      mlm_weight=1.0,
      nsp_weight=1.0,
      cp_weight=0.0,  # contrastive prediction: A and B of a pair find each other in the batch
      cp_temperature=0.05,  # CP's cosine similarities are divided by it
      log_every=50,
      eval_every=300,
      eval_batches=16,
      checkpoint_every=300,
      keep_checkpoints=3,
      cpu_peak_tflops=0.2,  # for MFU on CPU hosts; accelerators use known peaks
      profile_steps="",  # START,END: a jax.profiler trace of those steps in DIR/profile
      stall_timeout_s=1800.0,  # several processes: a phase (step, eval, save) longer stops all
  ))

  # A linear probe at each evaluation: a logistic regression on the frozen
  # encoder's features of a labelled task logs eval_probe_accuracy.
  config.probe = ml_collections.ConfigDict(dict(
      source="rt_polarity",  # rt_polarity | glue/NAME | tsv:PATH | csv:PATH | jsonl:PATH; '' = none
      text_fields="",  # local files: COLUMN or COLUMN,PAIR_COLUMN; '' = text, sentence, ...
      label_field="label",
      labels="",  # local files: class names in order, comma-separated; '' = those of train
      data_dir="",  # tfds data directory; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      train_examples=2000,  # a fixed sample of the training split fits the probe
      eval_examples=1000,  # and one of the validation split scores it
  ))

  config.mesh = config_sections.mesh()

  variant = arg or ""
  if variant in ("base", "large"):
    # BERT's recipe at sequence length 128 (phase 1); phase 2 continues at 512
    # with --config.data.max_seq_length=512 --config.data.max_predictions_per_seq=80.
    config.model.size = variant
    config.model.dtype = "bfloat16"
    config.model.remat_policy = "none"  # fastest on an H200 at these sizes
    config.data.max_predictions_per_seq = 20
    config.train.update(batch_size=256, steps=900_000, warmup_steps=10_000,
                        learning_rate=1e-4, log_every=100, eval_every=10_000,
                        checkpoint_every=5_000)
    if variant == "large":
      config.train.update(batch_size=1024, learning_rate=1e-4, optimizer="lamb")
  elif variant == "transfer":
    # Pretraining on a task's own text within 15 minutes (on a 2-core CPU,
    # about 3,300 steps): a tokenizer learned from that text, short pairs in
    # batches of 64, masking 30% of the tokens (evaluated at BERT's 15%), MLM
    # alone (most reviews are one sentence: NSP is the majority label), no
    # dropout, and a warm-up-stable-decay schedule that spans the budget.
    # Fine-tuned, it ends 1.8 points above random weights on rt_polarity
    # (experiments/transfer/README.md has every configuration tried).
    # Evaluations are few: they do not change the training, only its time.
    config.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
    config.data.update(source="task:rt_polarity", tokenizer="learn:8000", max_seq_length=64,
                       masked_lm_prob=0.3, eval_masked_lm_prob=0.15,
                       max_predictions_per_seq=20)
    config.train.update(batch_size=64, budget_minutes=15.0, schedule="warmup_stable_decay",
                        learning_rate=2e-3, nsp_weight=0.0, warmup_steps=300, eval_every=2500,
                        checkpoint_every=2500)
  elif variant == "modernbert":
    # ModernBERT (its tiny size; --config.model.size=base or large for the
    # released shapes) pretrained as it was: MLM alone (it has no NSP head)
    # masking 30% of the tokens, without dropout.
    config.model.update(architecture="modernbert", dropout_rate=0.0,
                        attention_dropout_rate=0.0)
    config.data.update(masked_lm_prob=0.3, max_predictions_per_seq=40)
    # MLM alone trains at 2e-3 (NSP is what needs the default's lower peak).
    config.train.update(nsp_weight=0.0, learning_rate=2e-3, warmup_steps=120)
  elif variant:
    raise ValueError(f"unknown pretrain config variant {variant!r} "
                     "(use base, large, transfer or modernbert)")
  return config
