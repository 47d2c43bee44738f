"""A model's logits over every example of a split, on the mesh: what
fine-tuning's evaluation, prediction and the linear probe share."""

import dataclasses

import jax
import numpy as np

from lmjax import parallel
from lmjax.data.task_input import by_length, evaluation_batches


@dataclasses.dataclass
class DeviceBatches:
  """Every example of a split once, as sharded global batches: in order of
  length, each padded to its bucket (the last also with dummy rows).
  `order[i]` is the example in row i."""
  batches: list[dict]
  order: np.ndarray


def device_batches(arrays: dict, batch_size: int, mesh, buckets=()) -> DeviceBatches:
  """The encoded examples `arrays` as sharded global batches of `batch_size`
  (this process's share of each), ordered by length when padded to buckets."""
  order = by_length(arrays) if buckets else np.arange(len(arrays["input_ids"]))
  ordered = {k: v[order] for k, v in arrays.items()}
  return DeviceBatches(
      [parallel.shard_batch(b, mesh) for b in evaluation_batches(
          ordered, batch_size, buckets=buckets, **parallel.process_share())], order)


def logits(eval_step, params, batches: DeviceBatches) -> np.ndarray:
  """The model's float64 logits [N, K] of the examples, in their order."""
  out = jax.device_get([parallel.in_order(eval_step(params, b)) for b in batches.batches])
  ordered = np.concatenate(out)[:len(batches.order)].astype(np.float64)
  result = np.empty_like(ordered)
  result[batches.order] = ordered
  return result
