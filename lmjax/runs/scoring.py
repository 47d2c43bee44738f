"""A model's outputs for every example of a split, on the mesh: what
fine-tuning's evaluation, prediction and the linear probe share."""

import dataclasses

import jax
import numpy as np

from lmjax import parallel
from lmjax.data.packing import pack_all, slot_examples
from lmjax.data.task_input import by_length, evaluation_batches, process_rows


@dataclasses.dataclass
class DeviceBatches:
  """Every example of a split once, as sharded global batches: packed into
  rows, or in order of length, each padded to its bucket (the last also
  with dummy rows). `slots[b]` holds the example each output row (or slot
  of a packed row) of batch b is, -1 for none."""
  batches: list[dict]
  slots: list[np.ndarray]
  count: int  # examples


def device_batches(arrays: dict, batch_size: int, mesh, buckets=(),
                   row_length: int | None = None) -> DeviceBatches:
  """The encoded examples `arrays` as sharded global batches of `batch_size`
  rows (this process's share of each): packed into rows of `row_length`,
  or one example a row, ordered by length when padded to buckets."""
  n = len(arrays["input_ids"])
  if row_length:
    packed = pack_all(arrays, row_length, batch_size)
    return DeviceBatches([parallel.shard_batch(process_rows(b, **parallel.process_share()),
                                               mesh) for b in packed],
                         [slot_examples(b) for b in packed], n)
  order = by_length(arrays) if buckets else np.arange(n)
  ordered = {k: v[order] for k, v in arrays.items()}
  batches = evaluation_batches(ordered, batch_size, buckets=buckets,
                               **parallel.process_share())
  slots = np.where(np.arange(len(batches) * batch_size) < n,
                   np.append(order, np.zeros(len(batches) * batch_size - n, int)), -1)
  return DeviceBatches([parallel.shard_batch(b, mesh) for b in batches],
                       list(slots.reshape(len(batches), batch_size)), n)


def logits(eval_step, params, batches: DeviceBatches) -> np.ndarray:
  """The model's float64 outputs [N, K] for the examples, in their order."""
  out = jax.device_get([parallel.in_order(eval_step(params, b)) for b in batches.batches])
  rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in out]).astype(np.float64)
  slots = np.concatenate([s.reshape(-1) for s in batches.slots])
  result = np.empty((batches.count, rows.shape[-1]))
  result[slots[slots >= 0]] = rows[slots >= 0]
  return result
