"""Task input: batches of encoded examples for fine-tuning (reshuffled
every epoch, packed into rows or padded to length buckets, optionally
grouped by length) and for evaluation (every example once), each process
reading its share of every global batch.
"""

import dataclasses
import sys

import grain
import numpy as np

from lmjax.data.loader import local_batch, stack
from lmjax.data.packing import Packing


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
  """A process's rows of a global batch: packed (every process packs the
  whole batch alike), or cut to the global batch's bucket (every process
  pads to the same length). Picklable, for grain."""
  process_index: int
  process_count: int
  buckets: tuple[int, ...]
  packing: Packing | None = None

  def __call__(self, batch):
    batch = self.packing(batch) if self.packing else trim_to_bucket(batch, self.buckets)
    rows = len(next(iter(batch.values())))
    local = local_batch(rows, self.process_index, self.process_count)
    start = self.process_index * local
    return {k: v[start:start + local] for k, v in batch.items()}


def examples_dataset(arrays: dict[str, np.ndarray], global_batch: int, seed: int,
                     process_index: int = 0, process_count: int = 1,
                     buckets: tuple[int, ...] = (), group_window: int = 0,
                     packing: Packing | None = None) -> grain.MapDataset:
  """This process's share of global batches of encoded examples, reshuffled
  every epoch, endless: `ds[k]` is its share of global batch k, packed
  into rows (lmjax.data.packing) or padded to the shortest of `buckets`
  that holds it (none: as encoded).

  group_window > 0 (with buckets) makes each batch of examples of one
  bucket where it can (see `grouped_batches`), so that it pads little; 0
  batches them as shuffled."""
  local_batch(global_batch, process_index, process_count)  # it splits evenly
  share = _Share(process_index, process_count, tuple(buckets), packing)
  if group_window and len(buckets) > 1 and len(_Rows(arrays)) >= global_batch:
    bucket_of = np.searchsorted(np.asarray(buckets), arrays["input_mask"].sum(1))
    return grain.MapDataset.source(
        _GroupedRows(arrays, bucket_of, global_batch, seed, group_window)).map(share)
  return (grain.MapDataset.source(_Rows(arrays)).shuffle(seed=seed).repeat(None)
          .batch(global_batch, drop_remainder=True, batch_fn=stack).map(share))


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
  share = _Share(process_index, process_count, tuple(buckets))
  return [share({k: v[start:start + global_batch] for k, v in padded.items()})
          for start in range(0, total, global_batch)]


def process_rows(batch: dict[str, np.ndarray], process_index: int = 0,
                 process_count: int = 1) -> dict[str, np.ndarray]:
  """This process's share of the rows of a global batch."""
  return _Share(process_index, process_count, ())(batch)


def by_length(arrays: dict[str, np.ndarray]) -> np.ndarray:
  """The order that sorts encoded examples by length (stable): batches of
  neighbours in it pad little."""
  return np.argsort(arrays["input_mask"].sum(1), kind="stable")
