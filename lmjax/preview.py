"""Shows what the model is fed: a few decoded instances, then statistics.

  python -m lmjax.preview --config=configs/pretrain.py \\
      [--config.data.source=text:corpus.txt] --num_batches=200

The last line printed is one JSON object of statistics over the batches.
"""

import json
import time

import numpy as np
from absl import flags

from lmjax import cli
from lmjax.data.loader import Loader
from lmjax.data.masking import Vocabulary
from lmjax.data.pretrain_input import check_data_config, pretraining_input
from lmjax.data.tokenization import MASK_ID, NUM_SPECIAL, Tokenizer
from lmjax.errors import check_fields

_CONFIG = cli.define_config("configs/pretrain.py")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 100, "batches to gather statistics over",
                                    lower_bound=1)
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 3, "instances to print", lower_bound=0)
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "validation"], "which split")


def batch_statistics(batches: list[dict], vocabulary: Vocabulary | None = None) -> dict:
  """Masking and packing statistics of pretraining batches; `vocabulary`
  says which ids are special (default: lmjax's SentencePiece ids)."""
  if vocabulary is None:
    special_V = np.arange(max(int(b["input_ids"].max()) for b in batches) + 1) < NUM_SPECIAL
    vocabulary = Vocabulary(special_V, special_V, MASK_ID)
  ids = np.concatenate([b["input_ids"] for b in batches])
  mask = np.concatenate([b["input_mask"] for b in batches])
  positions = np.concatenate([b["masked_positions"] for b in batches])
  targets = np.concatenate([b["masked_ids"] for b in batches])
  weights = np.concatenate([b["masked_weights"] for b in batches]) > 0
  nsp = np.concatenate([b["nsp_labels"] for b in batches])
  at_positions = np.take_along_axis(ids, positions, axis=1)
  predicted = int(weights.sum())
  as_mask = int((weights & (at_positions == vocabulary.mask_id)).sum())
  kept = int((weights & (at_positions == targets)).sum())
  # Eligible tokens: the non-special ones before masking put [MASK] in.
  eligible = int((~vocabulary.special_V[ids] & (mask > 0)).sum()) + as_mask
  lengths = mask.sum(1)
  return dict(
      sequences=len(ids), predicted_positions=predicted,
      predicted_fraction=round(predicted / max(eligible, 1), 5),
      mask_share=round(as_mask / max(predicted, 1), 5),
      random_share=round((predicted - as_mask - kept) / max(predicted, 1), 5),
      kept_share=round(kept / max(predicted, 1), 5),
      special_tokens_predicted=int((weights & vocabulary.special_V[targets]).sum()),
      nsp_random_next_rate=round(float(nsp.mean()), 5),
      padding_fraction=round(1 - float(mask.mean()), 5),
      mean_sequence_length=round(float(lengths.mean()), 2),
      max_sequence_length=int(lengths.max()),
      capped_sequences=round(float((weights.sum(1) == weights.shape[1]).mean()), 5))


def render(example: dict, tokenizer: Tokenizer) -> str:
  """One instance as pieces, with the predicted targets shown."""
  n = int(example["input_mask"].sum())
  pieces = tokenizer.pieces(example["input_ids"][:n])
  for pos, target, w in zip(example["masked_positions"], example["masked_ids"],
                            example["masked_weights"], strict=True):
    if w:
      shown = tokenizer.pieces([target])[0]
      pieces[pos] = (f"{pieces[pos]}<{shown}>"
                     if example["input_ids"][pos] != tokenizer.special.mask
                     else f"[MASK]<{shown}>")
  label = "random next" if example["nsp_labels"] else "actual next"
  return f"({label}) " + " ".join(pieces)


def main(argv):
  del argv
  config = _CONFIG()
  check_data_config(config.data)
  check_fields("config.train", config.train,
               [("batch_size", config.train.batch_size >= 1, "at least 1")])
  dataset, tokenizer, info = pretraining_input(config.data, config.train.batch_size,
                                               config.seed, _SPLIT.value)
  print(f"{info['source']} [{info['split']}]: {info['documents']:,} documents, "
        f"{info['tokens']:,} tokens, {info['pairs']:,} sentence pairs "
        f"(prepared data: {info['cache']}, ready in {info['startup_s']}s)",
        flush=True)
  loader = Loader(dataset, num_threads=config.data.num_threads)
  first = next(loader)
  for i in range(min(_NUM_EXAMPLES.value, len(first["input_ids"]))):
    print(render({k: v[i] for k, v in first.items()}, tokenizer), "\n", flush=True)
  start = time.perf_counter()
  batches = [next(loader) for _ in range(_NUM_BATCHES.value)]
  seconds = time.perf_counter() - start
  stats = batch_statistics(batches, Vocabulary.of(tokenizer))
  stats.update(sequences_per_s=round(stats["sequences"] / seconds, 1),
               undecodable_lines_skipped=info["undecodable_lines"],
               cache=info["cache"], startup_s=info["startup_s"])
  print(json.dumps(stats), flush=True)


if __name__ == "__main__":
  cli.run(main)
