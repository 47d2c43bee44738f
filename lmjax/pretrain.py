"""Pretrains BERT (MLM + NSP):

  python -m lmjax.pretrain --config=configs/pretrain.py --workdir=DIR

Any config field can be overridden, e.g. --config.train.steps=100. Running
again with the same DIR resumes from its latest checkpoint.
"""

import json
import time

from absl import flags
from ml_collections import config_flags

from lmjax import cli, parallel
from lmjax.errors import UserError
from lmjax.runs.pretraining import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "pretraining config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go",
                               required=True)


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise UserError("--config is required (e.g. --config=configs/pretrain.py)")
  parallel.initialize_distributed()
  start = time.perf_counter()
  summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if "eval_mlm_accuracy" in summary:
    print(f"step {summary['step']}: eval MLM accuracy {summary['eval_mlm_accuracy']:.4f} "
          f"(always the most frequent token: {summary['baseline_mlm_accuracy']:.4f}), "
          f"NSP accuracy {summary['eval_nsp_accuracy']:.4f} (majority label: "
          f"{summary['baseline_nsp_accuracy']:.4f}); {time.perf_counter() - start:.0f}s",
          flush=True)
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  cli.run(main)
