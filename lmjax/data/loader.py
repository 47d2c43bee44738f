"""The pretraining input pipeline, on grain: deterministic, sharded, resumable.

Element i of the global stream is pair `perm_e[i mod N]` of epoch e = i // N,
masked with random numbers hashed from (seed, i) (lmjax.data.masking): a pure
function of the seed, the epoch and the example. Global batch b is elements [b*G, (b+1)*G); process
p of P takes the p-th of its P equal slices. The loader's state is only the
number of batches it has handed out, so a restored loader continues exactly.
"""

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grain
import numpy as np

from lmjax.data import builtin, preparation, prepared
from lmjax.data.masking import Masking, Vocabulary, mask_batch, pad_pairs
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import UserError, check_fields


@dataclasses.dataclass(frozen=True)
class _ReadAndMask:
  """Reads the pairs of batch m (stream elements [m*b, (m+1)*b), by their
  pair indices) and masks them. Picklable, for grain's worker processes."""
  pairs: prepared.PreparedPairs
  masking: Masking
  vocabulary: Vocabulary
  seed: int
  batch: int

  def __call__(self, m, indices):
    pairs = self.pairs.get_many(indices)
    examples = np.arange(m * self.batch, (m + 1) * self.batch, dtype=np.int64)
    return mask_batch(pad_pairs(pairs, self.masking.max_seq_length), self.masking,
                      self.vocabulary, self.seed, examples)


def _stack(examples):
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def pretraining_dataset(pairs, masking: Masking, vocabulary: Vocabulary,
                        global_batch: int, seed: int, process_index: int = 0,
                        process_count: int = 1) -> grain.MapDataset:
  """Returns this process's batches as a random-access grain dataset:
  `ds[k]` is its share of global batch k, over endless epochs. `pairs` is
  a prepared.PreparedPairs (len, and get_many(indices) -> pair dicts)."""
  local = _local_batch(global_batch, process_index, process_count)
  batches = (grain.MapDataset.range(len(pairs))
             .shuffle(seed=seed)
             .repeat(None)
             .batch(local, drop_remainder=True)
             .map_with_index(_ReadAndMask(pairs, masking, vocabulary, seed + 1, local)))
  return batches.slice(slice(process_index, None, process_count))


def _local_batch(global_batch: int, process_index: int, process_count: int) -> int:
  """global_batch // process_count: the batches of one process. Process p
  takes every P-th, so together the processes read consecutive global
  batches."""
  if global_batch % process_count:
    raise UserError(f"global batch {global_batch} does not split evenly over "
                    f"{process_count} processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return global_batch // process_count


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Row i of a dict of equally long arrays, as a dict."""
  arrays: dict

  def __len__(self):
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.arrays.items()}


# The [N, L] arrays of encoded examples, which length bucketing shortens.
SEQUENCE_FIELDS = ("input_ids", "segment_ids", "input_mask")


def bucket_lengths(max_length: int, count: int) -> tuple[int, ...]:
  """The lengths a batch of examples is padded to: `count` of them, evenly
  spaced up to `max_length` and rounded up to multiples of 8 (one length,
  max_length, when count is 1)."""
  return tuple(sorted({min(max_length, -(-max_length * k // count // 8) * 8)
                       for k in range(1, count + 1)} | {max_length}))


def trim_to_bucket(batch: dict[str, np.ndarray], buckets: tuple[int, ...]) -> dict:
  """`batch` with its sequences cut to the shortest bucket length that holds
  its longest example (the padding beyond is all that goes)."""
  if not buckets:
    return batch
  longest = int(batch["input_mask"].sum(1).max(initial=0))
  length = next((b for b in buckets if b >= longest), buckets[-1])
  return {k: v[:, :length] if k in SEQUENCE_FIELDS else v for k, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class _Share:
  """A process's rows of a global batch, cut to the global batch's bucket
  (every process pads to the same length). Picklable, for grain."""
  process_index: int
  local: int
  buckets: tuple[int, ...]

  def __call__(self, batch):
    start = self.process_index * self.local
    return {k: v[start:start + self.local]
            for k, v in trim_to_bucket(batch, self.buckets).items()}


def examples_dataset(arrays: dict[str, np.ndarray], global_batch: int, seed: int,
                     process_index: int = 0, process_count: int = 1,
                     buckets: tuple[int, ...] = (), group_window: int = 0
                     ) -> grain.MapDataset:
  """This process's share of global batches of encoded examples, reshuffled
  every epoch, endless: `ds[k]` is its share of global batch k, padded to
  the shortest of `buckets` that holds it (none: as encoded).

  group_window > 0 (with buckets) makes each batch of examples of one
  bucket where it can (see `grouped_batches`), so that it pads little; 0
  batches them as shuffled."""
  local = _local_batch(global_batch, process_index, process_count)
  share = _Share(process_index, local, tuple(buckets))
  if group_window and len(buckets) > 1 and len(_Rows(arrays)) >= global_batch:
    bucket_of = np.searchsorted(np.asarray(buckets), arrays["input_mask"].sum(1))
    return grain.MapDataset.source(
        _GroupedRows(arrays, bucket_of, global_batch, seed, group_window)).map(share)
  return (grain.MapDataset.source(_Rows(arrays)).shuffle(seed=seed).repeat(None)
          .batch(global_batch, drop_remainder=True, batch_fn=_stack).map(share))


def grouped_batches(bucket_of: np.ndarray, global_batch: int, seed: int, epoch: int,
                    window: int) -> np.ndarray:
  """The [B, global_batch] example indices of epoch `epoch`'s batches, each
  of examples of one bucket where it can be: the examples shuffled with
  (seed, epoch), each run of `window` batches' worth ordered by bucket (in
  shuffled order within a bucket, so a batch is not sorted by length, which
  can go with the label) and cut into batches, and the batches shuffled. The
  last len % global_batch examples of the shuffle sit the epoch out."""
  rng = np.random.default_rng((seed, epoch))
  order = rng.permutation(len(bucket_of))[:len(bucket_of) // global_batch * global_batch]
  chunk = window * global_batch
  for start in range(0, len(order), chunk):
    part = order[start:start + chunk]
    order[start:start + chunk] = part[np.argsort(bucket_of[part], kind="stable")]
  batches = order.reshape(-1, global_batch)
  return batches[rng.permutation(len(batches))]


class _GroupedRows:
  """Global batch k of endless epochs of `grouped_batches`, stacked. Keeps
  the current epoch's batches (one tuple, swapped whole: safe across
  grain's threads); picklable, for grain's worker processes."""

  def __init__(self, arrays: dict, bucket_of: np.ndarray, global_batch: int, seed: int,
               window: int):
    self.arrays, self.bucket_of, self.global_batch = arrays, bucket_of, global_batch
    self.seed, self.window = seed, window
    self.per_epoch = len(bucket_of) // global_batch
    self._epoch: tuple[int, np.ndarray | None] = (-1, None)

  def __len__(self):
    return sys.maxsize  # endless

  def __getitem__(self, k):
    epoch, i = divmod(k, self.per_epoch)
    cached, batches = self._epoch
    if cached != epoch:
      batches = grouped_batches(self.bucket_of, self.global_batch, self.seed, epoch,
                                self.window)
      self._epoch = (epoch, batches)
    return {name: v[batches[i]] for name, v in self.arrays.items()}


def evaluation_batches(arrays: dict[str, np.ndarray], global_batch: int,
                       process_index: int = 0, process_count: int = 1,
                       buckets: tuple[int, ...] = ()) -> list[dict]:
  """Every example once, in order, as this process's shares of global
  batches, each padded to the shortest of `buckets` that holds it. The last
  batch is padded with copies of row 0 whose `weights` are 0; real rows have
  weight 1."""
  n = len(next(iter(arrays.values())))
  total = -(-n // global_batch) * global_batch
  padded = {k: np.concatenate([v, np.repeat(v[:1], total - n, axis=0)])
            for k, v in arrays.items()}
  padded["weights"] = (np.arange(total) < n).astype(np.float32)
  share = _Share(process_index, _local_batch(global_batch, process_index, process_count),
                 tuple(buckets))
  return [share({k: v[start:start + global_batch] for k, v in padded.items()})
          for start in range(0, total, global_batch)]


def by_length(arrays: dict[str, np.ndarray]) -> np.ndarray:
  """The order that sorts encoded examples by length (stable): batches of
  neighbours in it pad little."""
  return np.argsort(arrays["input_mask"].sum(1), kind="stable")


class Loader:
  """Iterates a batch dataset from batch `state` on; prefetches with threads."""

  def __init__(self, dataset: grain.MapDataset, start: int = 0,
               num_threads: int = 2, prefetch: int = 8):
    self._dataset = dataset
    self._options = grain.ReadOptions(num_threads=num_threads,
                                      prefetch_buffer_size=prefetch)
    self._start(start)

  def _start(self, step: int):
    self.step = step
    self._it = iter(self._dataset.slice(slice(step, None))
                    .to_iter_dataset(self._options))

  def __iter__(self) -> Iterator[dict]:
    return self

  def __next__(self) -> dict:
    batch = next(self._it)
    self.step += 1
    return batch

  def state(self) -> dict:
    """The loader's whole state: the number of batches handed out."""
    return {"step": self.step}

  def restore(self, state: dict) -> None:
    self._start(int(state["step"]))


def load_tokenizer(data_config) -> Tokenizer:
  """The config's tokenizer: a file or directory, learn:N (learned from the
  corpus), or the built-in one when none is named."""
  return Tokenizer.load(tokenizer_file(data_config))


def tokenizer_file(data_config) -> str:
  """Where the config's tokenizer is: for learn:N, the cached file it is
  learned into on first use."""
  if preparation.learned_size(data_config.tokenizer) is not None:
    return str(preparation.learned_tokenizer(data_config, cache_dir(data_config)))
  return data_config.tokenizer or str(builtin.TOKENIZER_FILE)


def cache_dir(data_config) -> str:
  """config.data.cache_dir, or $LMJAX_CACHE, or ~/.cache/lmjax."""
  return data_config.cache_dir or os.environ.get("LMJAX_CACHE") or str(
      Path.home() / ".cache" / "lmjax")


def check_data_config(data) -> None:
  """Raises ConfigError naming the first data field with an impossible value."""
  checks = [
      ("max_seq_length", data.max_seq_length >= 5, "at least 5"),
      ("max_predictions_per_seq", data.max_predictions_per_seq >= 1, "at least 1"),
      ("max_predictions_per_seq", data.max_predictions_per_seq <= data.max_seq_length,
       "at most max_seq_length"),
      ("masked_lm_prob", 0 < data.masked_lm_prob < 1, "in (0, 1)"),
      ("short_seq_prob", 0 <= data.short_seq_prob <= 1, "in [0, 1]"),
      ("num_threads", data.num_threads >= 0, "at least 0"),
      ("tokenizer", not (preparation.learned_size(data.tokenizer)
                         and data.source.startswith("prepared:")),
       "a file with a prepared: source (it was tokenized when prepared)"),
  ]
  check_fields("config.data", data, checks)


def prepared_pairs(data, seed: int, tokenizer: Tokenizer,
                   split: str) -> tuple[prepared.PreparedPairs, dict]:
  """The pairs of `split` of a config's `data` source: a `prepared:DIR`, or
  any other source prepared in-process into the cache on first use."""
  if data.source.startswith("prepared:"):
    directory, info = Path(data.source[len("prepared:"):]).expanduser(), {"cache": "prepared"}
  else:
    directory, info = preparation.cached(data, seed, tokenizer, cache_dir(data))
  pairs = prepared.PreparedPairs(directory, split)
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
                      process_index: int = 0, process_count: int = 1):
  """Builds the pretraining dataset of a config's `data` section (checked
  by `check_data_config` first).

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
                                global_batch, seed, process_index, process_count)
  info = dict(info, source=data.source, split=split,
              startup_s=round(time.perf_counter() - start, 2))
  return dataset, tokenizer, info
