"""Pretrains BERT (MLM + NSP):

  python -m lmjax.pretrain --config=configs/pretrain.py --workdir=DIR

Any config field can be overridden, e.g. --config.train.steps=100. Running
again with the same DIR resumes from its latest checkpoint.
"""

import json

from absl import flags
from ml_collections import config_flags

from lmjax import cli
from lmjax.errors import UserError
from lmjax.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "pretraining config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go",
                               required=True)


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise UserError("--config is required (e.g. --config=configs/pretrain.py)")
  summary = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  cli.run(main)
