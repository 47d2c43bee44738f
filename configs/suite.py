"""Task-suite configs: `--config=configs/suite.py`.

Each start fine-tuned on each task with `seeds` seeds under one protocol:
the fine-tuning config below (configs/finetune.py's defaults), the same for
every task, as papers score a pretraining run on GLUE. Any fine-tuning field
can be set through the suite (`--config.finetune.train.epochs=3`) except the
task and the start, which the suite sets from `tasks` and `starts`.
"""

import importlib.util
from pathlib import Path

import ml_collections


def _finetune_config() -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("suite_finetune",
                                                Path(__file__).parent / "finetune.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"configs/suite.py takes no variant, got {arg!r}")
  config = ml_collections.ConfigDict()
  # Comma-separated: rt_polarity | glue/NAME (tfds) | tsv:PATH | csv:PATH | jsonl:PATH
  config.tasks = "rt_polarity"
  # Comma-separated starts: pretrain:DIR | hf:DIR | random (random weights take the
  # architecture, size and tokenizer of the first pretrain:DIR start)
  config.starts = "pretrain:runs/pretrain,random"
  config.seeds = 3  # fine-tuning seeds per task and start: finetune.seed, +1, ...
  config.finetune = _finetune_config()
  # Set by the suite in every run: empty here, so that setting one is an error.
  config.finetune.task.source = config.finetune.init.source = ""
  return config
