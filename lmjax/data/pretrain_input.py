"""The pretraining input pipeline, on grain: deterministic, sharded, resumable.

Element i of the global stream is pair `perm_e[i mod N]` of epoch e = i // N,
masked with random numbers hashed from (seed, i) (lmjax.data.masking): a pure
function of the seed, the epoch and the example. Global batch b is elements
[b*G, (b+1)*G); process p of P takes the p-th of its P equal slices.
"""

import dataclasses
import threading
import time
from pathlib import Path

import grain
import numpy as np

from lmjax.data import builtin, cache, packing, shards
from lmjax.data.loader import local_batch
from lmjax.data.masking import Masking, Vocabulary, mask_batch, pad_pairs
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import UserError, check_fields


@dataclasses.dataclass(frozen=True)
class _ReadAndMask:
  """Reads the pairs of batch m (stream elements [m*b, (m+1)*b), by their
  pair indices) and masks them. Picklable, for grain's worker processes."""
  pairs: shards.PreparedPairs
  masking: Masking
  vocabulary: Vocabulary
  seed: int
  batch: int

  def __call__(self, m, indices):
    pairs = self.pairs.get_many(indices)
    examples = np.arange(m * self.batch, (m + 1) * self.batch, dtype=np.int64)
    return mask_batch(pad_pairs(pairs, self.masking.max_seq_length), self.masking,
                      self.vocabulary, self.seed, examples)


@dataclasses.dataclass(frozen=True)
class RowPacking:
  """Packed pretraining rows: the step's `groups` (micro-batches), the
  `row_multiple` (devices the batch splits over) a row count must be, and
  the `window` of steps whose pairs are packed together (1: each step packs
  exactly its own pairs, as it would hold them one a row)."""
  groups: int = 1
  row_multiple: int = 1
  window: int = 1
  steps: int = 2 * packing.ROW_STEPS  # row counts; a long run affords more compiles


def prediction_slots(masking: Masking) -> int:
  """The MLM prediction slots of a packed row: a pair's, or round(15%) of
  the row's tokens, and 2 for rounding (the placement keeps a row's pairs'
  predictions within them)."""
  return max(masking.max_predictions,
             int(np.ceil(masking.masked_lm_prob * masking.max_seq_length))) + 2


def most_predictions(lengths: np.ndarray, masking: Masking) -> np.ndarray:
  """The most MLM predictions masking can choose in pairs of these lengths:
  round(masked_lm_prob) of their tokens but [CLS] and the two [SEP]s (at
  least one, at most max_predictions), as `mask_batch` counts them."""
  eligible = np.maximum(lengths - 3, 0)
  return np.minimum(masking.max_predictions,
                    np.maximum(1, np.round(eligible * masking.masked_lm_prob))).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class _ReadPackAndMask(_ReadAndMask):
  """Reads the pairs of global batch m (stream elements [m*G, (m+1)*G),
  `batch` = G) or, with a window of W steps, those of its window (elements
  [w*W*G, (w+1)*W*G) for w = m // W, from `stream`, the batches of pair
  indices); places them in packed rows (every process alike); masks and
  packs those of this process's rows of step m. Picklable, for grain."""
  rows: RowPacking
  process_index: int
  process_count: int
  stream: grain.MapDataset | None = None

  def __call__(self, m, indices):
    window = self.rows.window
    first = m // window * window
    pairs, placements = self._window(first, indices)
    placed = placements[m - first]
    # Window steps number their examples in the window; micro-batches are row sets.
    groups = 1 if window > 1 else self.rows.groups
    length = self.masking.max_seq_length
    local = local_batch(len(placed), self.process_index, self.process_count)
    mine = placed[self.process_index * local:(self.process_index + 1) * local]
    members = sorted(i for row in mine for i in row) or [0]  # [0]: rows all empty
    masked = mask_batch(pad_pairs([pairs[i] for i in members], length), self.masking,
                        self.vocabulary, self.seed,
                        first * self.batch + np.array(members, np.int64))
    whole = {k: np.zeros((len(pairs), *v.shape[1:]), v.dtype) for k, v in masked.items()}
    for k, v in masked.items():  # by index in the batch, which example_index counts
      whole[k][members] = v
    return packing.fill(whole, mine, length, packing.max_examples_per_row(length), groups,
                        prediction_slots(self.masking))

  def _window(self, first: int, indices) -> tuple[list, list]:
    """The pairs of the window from step `first` and the rows of each of its
    steps, placed once for its W steps: by the first loader thread that
    needs them, while threads on the same window wait (the last three
    windows are kept)."""
    with self.__dict__.setdefault("_lock", threading.Lock()):
      cache = self.__dict__.setdefault("_cache", {})
      entry = cache.get(first)
      mine = entry is None
      if mine:
        while len(cache) >= 3:
          del cache[min(cache)]
        entry = cache[first] = [threading.Event(), None]
    if not mine:
      entry[0].wait()
      if entry[1] is not None:
        return entry[1]
      return self._place(first, indices)  # its placer failed: fail here too, or succeed
    try:
      entry[1] = self._place(first, indices)
    finally:
      entry[0].set()
    return entry[1]

  def _place(self, first: int, indices) -> tuple[list, list]:
    window = self.rows.window
    if window > 1:  # `indices` is the step's number: the window's pairs are the stream's
      indices = np.concatenate([self.stream[first + s] for s in range(window)])
    pairs = self.pairs.get_many(indices)
    length = self.masking.max_seq_length
    lengths = np.array([len(p["tokens"]) for p in pairs])
    placing = dict(groups=self.rows.groups, row_multiple=self.rows.row_multiple,
                   max_per_row=packing.max_examples_per_row(length),
                   costs=most_predictions(lengths, self.masking),
                   budget=prediction_slots(self.masking), steps=self.rows.steps)
    if window > 1:
      placements = packing.place_window(lengths, length, window, **placing)
    else:  # example i is the i-th of the batch, in micro-batch i % groups
      placements = [packing.place(lengths, length, **placing)]
    return pairs, placements

  def __getstate__(self):  # grain pickles its transforms for worker processes
    return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_cache")}

  def __setstate__(self, state):
    self.__dict__.update(state)


def pretraining_dataset(pairs, masking: Masking, vocabulary: Vocabulary,
                        global_batch: int, seed: int, process_index: int = 0,
                        process_count: int = 1,
                        rows: RowPacking | None = None) -> grain.MapDataset:
  """Returns this process's batches as a random-access grain dataset:
  `ds[k]` is its share of global batch k, over endless epochs; with `rows`,
  the batch's pairs packed into rows (lmjax.data.packing). `pairs` is a
  shards.PreparedPairs (len, and get_many(indices) -> pair dicts)."""
  local = local_batch(global_batch, process_index, process_count)
  if rows is not None:
    stream = (grain.MapDataset.range(len(pairs))
              .shuffle(seed=seed)
              .repeat(None)
              .batch(global_batch, drop_remainder=True))
    read = _ReadPackAndMask(pairs, masking, vocabulary, seed + 1, global_batch, rows,
                            process_index, process_count, stream if rows.window > 1 else None)
    if rows.window > 1:  # a window's first step reads its pairs; the others need no indices
      return grain.MapDataset.range(len(stream)).map_with_index(read)
    return stream.map_with_index(read)
  batches = (grain.MapDataset.range(len(pairs))
             .shuffle(seed=seed)
             .repeat(None)
             .batch(local, drop_remainder=True)
             .map_with_index(_ReadAndMask(pairs, masking, vocabulary, seed + 1, local)))
  return batches.slice(slice(process_index, None, process_count))


def load_tokenizer(data_config) -> Tokenizer:
  """The config's tokenizer: a file or directory, learn:N (learned from the
  corpus), or the built-in one when none is named."""
  return Tokenizer.load(tokenizer_file(data_config))


def tokenizer_file(data_config) -> str:
  """Where the config's tokenizer is: for learn:N, the cached file it is
  learned into on first use."""
  if cache.learned_size(data_config.tokenizer) is not None:
    return str(cache.learned_tokenizer(data_config, cache.cache_dir(data_config)))
  return data_config.tokenizer or str(builtin.TOKENIZER_FILE)


def check_data_config(data) -> None:
  """Raises ConfigError naming the first data field with an impossible value."""
  checks = [
      ("max_seq_length", data.max_seq_length >= 5, "at least 5"),
      ("max_predictions_per_seq", data.max_predictions_per_seq >= 1, "at least 1"),
      ("max_predictions_per_seq", data.max_predictions_per_seq <= data.max_seq_length,
       "at most max_seq_length"),
      ("masked_lm_prob", 0 < data.masked_lm_prob < 1, "in (0, 1)"),
      ("eval_masked_lm_prob", data.get("eval_masked_lm_prob") is None
       or 0 < data.eval_masked_lm_prob < 1, "in (0, 1), or None for masked_lm_prob"),
      ("short_seq_prob", 0 <= data.short_seq_prob <= 1, "in [0, 1]"),
      ("num_threads", data.num_threads >= 0, "at least 0"),
      ("packing_window", data.get("packing_window", 1) >= 1, "at least 1"),
      ("tokenizer", not (cache.learned_size(data.tokenizer)
                         and data.source.startswith("prepared:")),
       "a file with a prepared: source (it was tokenized when prepared)"),
  ]
  check_fields("config.data", data, checks)


def prepared_pairs(data, seed: int, tokenizer: Tokenizer,
                   split: str) -> tuple[shards.PreparedPairs, dict]:
  """The pairs of `split` of a config's `data` source: a `prepared:DIR`, or
  any other source prepared in-process into the cache on first use."""
  if data.source.startswith("prepared:"):
    directory, info = Path(data.source[len("prepared:"):]).expanduser(), {"cache": "prepared"}
  else:
    directory, info = cache.cached(data, seed, tokenizer, cache.cache_dir(data))
  pairs = shards.PreparedPairs(directory, split)
  meta = pairs.metadata
  if (meta.tokenizer_fingerprint, meta.max_seq_length) != (tokenizer.fingerprint,
                                                          data.max_seq_length):
    raise UserError(
        f"{data.source} was prepared with tokenizer {meta.tokenizer_fingerprint} and "
        f"max_seq_length {meta.max_seq_length}, but the config has tokenizer "
        f"{tokenizer.fingerprint} ({data.tokenizer or 'built-in'}) and max_seq_length "
        f"{data.max_seq_length}; set --config.data.tokenizer and "
        "--config.data.max_seq_length to the prepared ones, or prepare it again")
  entry = meta.splits[split]
  if split == "train" and entry["tokens"] < _FEW_TOKENS_PER_DOCUMENT * entry["documents"]:
    print(f"warning: {data.source}: {entry['documents']:,} documents of "
          f"{entry['tokens']:,} tokens in all ({entry['tokens'] / entry['documents']:.1f} "
          "a document); is this the corpus you meant? (BERT's text format: one sentence "
          "a line, a blank line between documents)", flush=True)
  return pairs, dict(info, documents=entry["documents"], tokens=entry["tokens"],
                     pairs=entry["pairs"],
                     undecodable_lines=meta.splits.get("train", entry).get(
                         "undecodable_lines", 0))


_FEW_TOKENS_PER_DOCUMENT = 16  # below it, a corpus is more likely a mistake than text


def pretraining_input(data, global_batch: int, seed: int, split: str = "train",
                      process_index: int = 0, process_count: int = 1,
                      rows: RowPacking | None = None):
  """Builds the pretraining dataset of a config's `data` section (checked
  by `check_data_config` first); with `rows`, of packed rows.

  Returns (dataset of this process's batches, tokenizer, info) where info
  holds the corpus sizes, the cache outcome and the start-up time.
  """
  start = time.perf_counter()
  tokenizer = load_tokenizer(data)
  pairs, info = prepared_pairs(data, seed, tokenizer, split)
  masking = Masking(max_seq_length=data.max_seq_length,
                    max_predictions=data.max_predictions_per_seq,
                    masked_lm_prob=data.masked_lm_prob,
                    whole_word_masking=data.whole_word_masking)
  dataset = pretraining_dataset(pairs, masking, Vocabulary.of(tokenizer),
                                global_batch, seed, process_index, process_count, rows)
  info = dict(info, source=data.source, split=split,
              startup_s=round(time.perf_counter() - start, 2))
  return dataset, tokenizer, info
