"""The fine-tuning objective: classification (cross-entropy over K classes)
or regression (squared error of one score) on a sequence classifier (BERT's
or ModernBERT's).

Pure functions on device: the losses, `train_step(state, batch, rng)` and
`eval_step(params, batch) -> logits`; on the host, the loss and task metrics
of those logits, and the metrics of always answering the majority class.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.special

from lmjax.model.rows import PACKED_INPUTS, inputs_of
from lmjax.train import steps
from lmjax.train.task_metrics import task_metrics


def init_params(model: nn.Module, example_batch: steps.Batch) -> steps.InitParams:
  """`rng -> params` of `model` (a sequence classifier) for batches like
  this one (unpacked)."""
  inputs = {k: v for k, v in inputs_of(model, example_batch).items() if k not in PACKED_INPUTS}
  return lambda rng: model.init(rng, **inputs)["params"]


def per_example(logits: jax.Array, batch: steps.Batch) -> tuple[jax.Array, jax.Array,
                                                                  jax.Array]:
  """(logits [M, K], labels [M], weights [M]) of a batch's examples: M = B
  one a row, or R * E slots of packed rows, where empty slots weigh 0."""
  if "example_mask" not in batch:
    return logits, batch["labels"], jnp.ones(logits.shape[0], jnp.float32)
  return (logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
          batch["example_mask"].reshape(-1).astype(jnp.float32))


def losses(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Per-example loss [B]: cross-entropy over K > 1 classes, or the squared
  error of a regressor's single output (K = 1)."""
  if logits_BxK.shape[-1] == 1:
    return jnp.square(logits_BxK[:, 0] - labels_B.astype(logits_BxK.dtype))
  log_probs_BxK = jax.nn.log_softmax(logits_BxK)
  return -jnp.take_along_axis(log_probs_BxK, labels_B[:, None].astype(jnp.int32), -1)[:, 0]


def totals(batch: steps.Batch) -> dict[str, jax.Array]:
  """The normalizer of a batch's loss: its examples."""
  if "example_mask" in batch:
    return dict(examples=batch["example_mask"].astype(jnp.float32).sum())
  return dict(examples=jnp.float32(batch["labels"].shape[0]))


def make_loss(model: nn.Module):
  """Returns `loss_fn(params, batch, rng, totals=None) -> (loss, parts)`:
  the loss of a forward pass with dropout summed over the batch and divided
  by `totals['examples']` (the batch's own by default: its mean), and the
  counts that make accuracy."""

  def loss_fn(params, batch, rng, batch_totals=None):
    logits = model.apply({"params": params}, **inputs_of(model, batch),
                         deterministic=False, rngs={"dropout": rng})
    logits_MxK, labels_M, weights_M = per_example(logits, batch)
    loss_M = losses(logits_MxK, labels_M) * weights_M
    parts = dict(count=weights_M.sum())
    if logits_MxK.shape[-1] > 1:
      correct = (logits_MxK.argmax(-1) == labels_M) * weights_M
      parts["correct"] = correct.sum()
    examples = (batch_totals or totals(batch))["examples"]
    return loss_M.sum() / examples, parts

  return loss_fn


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    accum_steps: int = 1, schedule=None):
  """Returns `train_step(state, batch, rng) -> (state, metrics)`: the mean
  loss over the batch, and accuracy for a classifier."""

  def summarize(parts):
    return {"accuracy": parts["correct"] / parts["count"]} if "correct" in parts else {}

  return steps.make_step(make_loss(model), tx, accum_steps, schedule, summarize, totals)


def make_eval_step(model: nn.Module):
  """Returns `eval_step(params, batch) -> logits [B, K]` ([R, E, K] of
  packed rows) with no dropout."""

  def eval_step(params, batch: steps.Batch):
    return model.apply({"params": params}, **inputs_of(model, batch))

  return eval_step


def score(metrics: tuple[str, ...], logits_NxK: np.ndarray, labels_N: np.ndarray,
          prefix: str) -> dict[str, float]:
  """`{prefix}_loss` and the task's metrics of float64 logits on the host."""
  if logits_NxK.shape[1] == 1:
    loss = np.mean((logits_NxK[:, 0] - labels_N) ** 2)
  else:
    log_probs = scipy.special.log_softmax(logits_NxK, axis=1)
    loss = -np.mean(log_probs[np.arange(len(labels_N)), labels_N])
  scores = task_metrics(metrics, logits_NxK, labels_N)
  return {f"{prefix}_loss": float(loss), **{f"{prefix}_{k}": v for k, v in scores.items()}}


def majority(metrics: tuple[str, ...], num_labels: int, train_labels: np.ndarray,
             labels: np.ndarray, prefix: str) -> dict[str, float]:
  """The metrics of always answering the most frequent training label."""
  logits = np.zeros((len(labels), num_labels))
  logits[:, np.bincount(train_labels, minlength=num_labels).argmax()] = 1
  return {f"{prefix}_majority_{k}": v
          for k, v in task_metrics(metrics, logits, labels).items()}
