"""The transfer experiment's config: `--config=experiments/transfer/config.py`.

Pretraining variants on one corpus, each fine-tuned on one task with several
seeds, next to fine-tuning from random weights. The pretraining and
fine-tuning runs take the `transfer` variants of configs/pretrain.py and
configs/finetune.py, and any of their fields can be overridden, e.g.
`--config.pretrain.train.budget_minutes=5 --config.finetune.train.epochs=3`
(the pretraining runs for a budget: `train.steps` is what it affords).
"""

import importlib.util
from pathlib import Path

import ml_collections


def _variant(file: str, variant: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"transfer_{Path(file).stem}",
                                                Path(__file__).parents[2] / "configs" / file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"experiments/transfer/config.py takes no variant, got {arg!r}")
  config = ml_collections.ConfigDict()
  config.task = "rt_polarity"  # rt_polarity | glue/NAME | tsv:PATH | csv:PATH | jsonl:PATH
  config.corpus = ""  # the pretraining source; '' = task:TASK, the task's own training text
  # Pretraining variants (mlm, mlm_nsp, mlm_cp, mlm_nsp_cp, nsp, cp), and
  # random: fine-tuning from random weights of the same size and vocabulary;
  # modernbert_mlm and modernbert_random: the same with ModernBERT.
  config.variants = "mlm,mlm_nsp,mlm_cp,mlm_nsp_cp,random"
  config.seeds = 3  # fine-tuning seeds per variant: finetune.seed, +1, ...
  # An objective's weight in the variants that have it.
  config.mlm_weight = 1.0
  config.nsp_weight = 1.0
  config.cp_weight = 0.1
  # Each run's config is one of these with what the experiment sets: the
  # pretraining source, objective weights and probe task; the fine-tuning
  # task, seed and init.source (pretrain:DIR/pretrain/VARIANT, or random).
  config.pretrain = _variant("pretrain.py", "transfer")
  config.finetune = _variant("finetune.py", "transfer")
  # What the experiment sets in every run is left out here, so that setting it
  # is an error rather than ignored: the sources (config.corpus, config.task,
  # the variants) and the random variant's tokenizer (the pretraining's) are
  # empty, and the objectives' weights are config.*_weight.
  config.pretrain.data.source = config.pretrain.probe.source = ""
  config.finetune.task.source = config.finetune.init.source = ""
  for field in ("mlm_weight", "nsp_weight", "cp_weight"):
    del config.pretrain.train[field]
  return config
