"""Fine-tunes a BERT encoder for classification or regression:

  python -m lmjax.finetune --config=configs/finetune.py --workdir=DIR

and predicts with the result:

  python -m lmjax.finetune --config=configs/finetune.py --workdir=DIR \\
      --config.mode=predict --config.predict.input=texts.txt

Running again with the same DIR resumes from its latest checkpoint.
"""

import json
import time

from absl import flags
from ml_collections import config_flags

from lmjax import cli, parallel
from lmjax.errors import UserError
from lmjax.runs.finetuning import finetune
from lmjax.runs.prediction import predict

_CONFIG = config_flags.DEFINE_config_file("config", None, "fine-tuning config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go",
                               required=True)


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise UserError("--config is required (e.g. --config=configs/finetune.py)")
  parallel.initialize_distributed()
  start = time.perf_counter()
  if config.mode == "predict":
    summary = predict(config, _WORKDIR.value)
    print(f"wrote {summary['predictions']} predictions to {summary['output']}", flush=True)
  else:
    summary = finetune(config, _WORKDIR.value)
    main_metric = summary["main_metric"]
    for prefix, split in (("test", "test"), ("eval", "validation")):
      if f"{prefix}_{main_metric}" in summary:
        majority = summary.get(f"{prefix}_majority_{main_metric}")
        print(f"{summary['task']}: {split} {main_metric} {summary[f'{prefix}_{main_metric}']:.4f}"
              + (f" (majority class: {majority:.4f})" if majority is not None else "")
              + f", best checkpoint step {summary['best_step']}; "
              f"{time.perf_counter() - start:.0f}s", flush=True)
        break
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  cli.run(main)
