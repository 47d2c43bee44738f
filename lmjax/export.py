"""Writes an lmjax workdir as a Hugging Face directory:

  python -m lmjax.export --workdir=DIR --output=HF_DIR

A fine-tuning run becomes a BertForSequenceClassification (its best
checkpoint, with id2label), a pretraining run a BertForPreTraining (its
newest checkpoint); a ModernBERT run a ModernBertForSequenceClassification or
a ModernBertForMaskedLM; each with its tokenizer. transformers loads HF_DIR
with from_pretrained.
"""

import json

from absl import flags

from lmjax import cli
from lmjax.runs.export import export

_WORKDIR = flags.DEFINE_string("workdir", None, "a fine-tuning or pretraining workdir")
_OUTPUT = flags.DEFINE_string("output", None, "the Hugging Face directory to write")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "replace a non-empty --output")


def main(argv):
  del argv
  cli.require(_WORKDIR, _OUTPUT)
  written = export(_WORKDIR.value, _OUTPUT.value, _OVERWRITE.value)
  print(f"wrote {written['architecture']} (step {written['step']}) to {written['output']}",
        flush=True)
  print(json.dumps(written), flush=True)


if __name__ == "__main__":
  cli.run(main)
