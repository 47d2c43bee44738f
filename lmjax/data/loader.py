"""What every input pipeline shares: a resumable iterator over a grain
dataset of batches, and the share of a global batch one process reads.

A dataset's element k is this process's share of global batch k (a pure
function of the seed and k), so a loader's state is only the number of
batches it has handed out, and a restored loader continues exactly.
"""

from collections.abc import Iterator

import grain
import numpy as np

from lmjax.errors import UserError


def stack(examples: list[dict]) -> dict:
  """Examples (dicts of arrays) as one dict of stacked arrays."""
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def local_batch(global_batch: int, process_index: int, process_count: int) -> int:
  """global_batch // process_count: the batches of one process. Process p
  takes every P-th, so together the processes read consecutive global
  batches."""
  if global_batch % process_count:
    raise UserError(f"global batch {global_batch} does not split evenly over "
                    f"{process_count} processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return global_batch // process_count


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
