"""Pure step functions, `train_step(state, batch, rng)` and `eval_step(state,
batch)`, for pretraining and for fine-tuning a classifier or regressor, plus
the sharded creation of a TrainState.

They close over the model and optimizer only; everything else is an argument,
so a research script can call them with no flags and no files.
"""

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lmjax import parallel

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer updates done so far
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class LossWeights:
  mlm: float = 1.0
  nsp: float = 1.0


def pretraining_losses(outputs: dict, batch: Batch) -> dict[str, jax.Array]:
  """MLM loss (averaged over real predictions, by `masked_weights`) and NSP
  loss, with the counts that make accuracies; all float32 scalars."""
  logits_BxPxV = outputs["mlm_logits"]
  weights_BxP = batch["masked_weights"].astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits_BxPxV)
  target_logp = jnp.take_along_axis(log_probs, batch["masked_ids"][..., None], -1)[..., 0]
  weight_sum = jnp.maximum(weights_BxP.sum(), 1.0)
  mlm_correct = ((logits_BxPxV.argmax(-1) == batch["masked_ids"]) * weights_BxP).sum()
  nsp_log_probs = jax.nn.log_softmax(outputs["nsp_logits"])
  nsp_logp = jnp.take_along_axis(nsp_log_probs, batch["nsp_labels"][:, None], -1)[:, 0]
  nsp_correct = (outputs["nsp_logits"].argmax(-1) == batch["nsp_labels"]).sum()
  return dict(mlm_loss=-(target_logp * weights_BxP).sum() / weight_sum,
              nsp_loss=-nsp_logp.mean(),
              mlm_correct=mlm_correct.astype(jnp.float32), mlm_count=weights_BxP.sum(),
              nsp_correct=nsp_correct.astype(jnp.float32),
              nsp_count=jnp.float32(batch["nsp_labels"].shape[0]))


def _model_inputs(batch: Batch) -> dict:
  keys = ("input_ids", "segment_ids", "input_mask", "masked_positions")
  return {k: batch[k] for k in keys}


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, accum_steps: int = 1,
              schedule: Callable | None = None, summarize: Callable = lambda parts: parts):
  """Returns `train_step(state, batch, rng) -> (state, metrics)` for any loss.

  `loss_fn(params, batch, rng) -> (loss, parts)`. The batch is split into
  `accum_steps` micro-batches whose gradients are summed in a `lax.scan`
  before one optimizer update (as big_vision does), so a step always means
  one update. Parts named `*loss` are averaged over micro-batches, the others
  (counts) summed; `summarize(parts)` turns them into the step's metrics,
  next to loss, grad_norm and learning_rate. Dropout keys are
  `fold_in(rng, step)`.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if accum_steps == 1:
      (loss, parts), grads = grad_fn(state.params, batch, rng)
    else:
      # Micro-batch i takes rows i, i+k, i+2k, ...: every device's shard of
      # the batch feeds every micro-batch equally.
      micro = jax.tree.map(
          lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps,
                              *x.shape[1:]).swapaxes(0, 1), batch)

      def accumulate(carry, inputs):
        i, micro_batch = inputs
        out = grad_fn(state.params, micro_batch, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, out), None

      shapes = jax.eval_shape(grad_fn, state.params,
                              jax.tree.map(lambda x: x[0], micro), rng)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      ((loss, parts), grads), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(accum_steps), micro))
      loss, grads = loss / accum_steps, jax.tree.map(lambda g: g / accum_steps, grads)
      parts = {k: v / accum_steps if k.endswith("loss") else v for k, v in parts.items()}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(loss=loss, **summarize(parts), grad_norm=optax.tree.norm(grads))
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    weights: LossWeights = LossWeights(), accum_steps: int = 1,
                    schedule: Callable | None = None):
  """Returns the pretraining `train_step(state, batch, rng) -> (state,
  metrics)`: MLM and NSP losses, weighted, with their accuracies."""

  def loss_fn(params, batch, rng):
    outputs = model.apply({"params": params}, **_model_inputs(batch),
                          deterministic=False, rngs={"dropout": rng})
    parts = pretraining_losses(outputs, batch)
    return weights.mlm * parts["mlm_loss"] + weights.nsp * parts["nsp_loss"], parts

  def summarize(parts):
    return dict(mlm_loss=parts["mlm_loss"], nsp_loss=parts["nsp_loss"],
                mlm_accuracy=parts["mlm_correct"] / jnp.maximum(parts["mlm_count"], 1),
                nsp_accuracy=parts["nsp_correct"] / parts["nsp_count"])

  return make_step(loss_fn, tx, accum_steps, schedule, summarize)


def make_eval_step(model: nn.Module):
  """Returns `eval_step(state, batch) -> sums` (losses weighted by counts,
  correct predictions and counts), to be added over an evaluation set."""

  def eval_step(state: TrainState, batch: Batch):
    outputs = model.apply({"params": state.params}, **_model_inputs(batch))
    parts = pretraining_losses(outputs, batch)
    return dict(mlm_loss_sum=parts["mlm_loss"] * parts["mlm_count"],
                nsp_loss_sum=parts["nsp_loss"] * parts["nsp_count"],
                **{k: parts[k] for k in ("mlm_correct", "mlm_count",
                                         "nsp_correct", "nsp_count")})

  return eval_step


_CLASSIFIER_INPUTS = ("input_ids", "segment_ids", "input_mask")


def classification_losses(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Per-example loss [B]: cross-entropy over K > 1 classes, or the squared
  error of a regressor's single output (K = 1)."""
  if logits_BxK.shape[-1] == 1:
    return jnp.square(logits_BxK[:, 0] - labels_B.astype(logits_BxK.dtype))
  log_probs = jax.nn.log_softmax(logits_BxK)
  return -jnp.take_along_axis(log_probs, labels_B[:, None].astype(jnp.int32), -1)[:, 0]


def make_classifier_train_step(model: nn.Module, tx: optax.GradientTransformation,
                               accum_steps: int = 1, schedule: Callable | None = None):
  """Returns the fine-tuning `train_step(state, batch, rng) -> (state,
  metrics)` of a BertForSequenceClassification: mean loss over the batch,
  and accuracy for a classifier."""

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, *(batch[k] for k in _CLASSIFIER_INPUTS),
                         deterministic=False, rngs={"dropout": rng})
    losses = classification_losses(logits, batch["labels"])
    parts = dict(count=jnp.float32(losses.shape[0]))
    if logits.shape[-1] > 1:
      parts["correct"] = (logits.argmax(-1) == batch["labels"]).sum().astype(jnp.float32)
    return losses.mean(), parts

  def summarize(parts):
    return {"accuracy": parts["correct"] / parts["count"]} if "correct" in parts else {}

  return make_step(loss_fn, tx, accum_steps, schedule, summarize)


def make_classifier_eval_step(model: nn.Module):
  """Returns `eval_step(state, batch) -> logits [B, K]` (float32), with no
  dropout; metrics are computed from them on the host."""

  def eval_step(state: TrainState, batch: Batch):
    return model.apply({"params": state.params}, *(batch[k] for k in _CLASSIFIER_INPUTS))

  return eval_step


def _state_init(model: nn.Module, tx: optax.GradientTransformation, example_batch: Batch):
  inputs = (_model_inputs(example_batch) if "masked_positions" in example_batch
            else {k: example_batch[k] for k in _CLASSIFIER_INPUTS})

  def init(rng):
    params = model.init(rng, **inputs)["params"]
    return TrainState(jnp.int32(0), params, tx.init(params))

  return init


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       mesh, example_batch: Batch, rng: jax.Array,
                       rules=parallel.RULES):
  """Returns (state, state shardings): parameters and optimizer moments are
  created directly in the shardings their logical axes give."""
  return parallel.sharded_init(_state_init(model, tx, example_batch), mesh, rng,
                               rules=rules)


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation,
                         mesh, example_batch: Batch, rules=parallel.RULES):
  """The state `create_train_state` would make, as ShapeDtypeStructs that
  carry its shardings (a checkpoint's restore target); nothing is allocated."""
  with parallel.sharding_context(mesh, rules):
    abstract = jax.eval_shape(_state_init(model, tx, example_batch), jax.random.key(0))
    shardings = parallel.logical_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      nn.unbox(abstract), shardings)


def jit_train_step(train_step, state_shardings, mesh, rules=parallel.RULES):
  """Jits `train_step` with its shardings; the state's buffers are donated."""
  batch = parallel.batch_sharding(mesh, rules)
  step = jax.jit(train_step, in_shardings=(state_shardings, batch, parallel.replicated(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=0)
  return _with_rules(step, mesh, rules)


def jit_eval_step(eval_step, state_shardings, mesh, rules=parallel.RULES):
  batch = parallel.batch_sharding(mesh, rules)
  step = jax.jit(eval_step, in_shardings=(state_shardings, batch),
                 out_shardings=parallel.replicated(mesh))
  return _with_rules(step, mesh, rules)


def _with_rules(fn, mesh, rules):
  @functools.wraps(fn)
  def wrapped(*args):
    with parallel.sharding_context(mesh, rules):
      return fn(*args)
  return wrapped
