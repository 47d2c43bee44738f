"""The pretraining objective: masked language modelling (MLM) and
next-sentence prediction (NSP) on BertForPreTraining; MLM alone on a model
without an NSP head (ModernBertForMaskedLM).

Pure functions of (params, batch): the losses, `train_step(state, batch,
rng)`, an `eval_step(params, batch)` whose sums add up over an evaluation
set, and the accuracies those sums give.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmjax import parallel
from lmjax.model.rows import PACKED_INPUTS, inputs_of
from lmjax.train import contrastive, steps


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """The objectives' weights in the loss; contrastive prediction (CP,
  lmjax.train.contrastive) runs only with a positive weight."""
  mlm: float = 1.0
  nsp: float = 1.0
  cp: float = 0.0
  cp_temperature: float = 0.05


def model_inputs(model: nn.Module, batch: steps.Batch) -> dict:
  """The model's inputs of a batch, packed rows' too."""
  return inputs_of(model, batch, "masked_positions")


def init_params(model: nn.Module, example_batch: steps.Batch) -> steps.InitParams:
  """`rng -> params` of `model` (BertForPreTraining, ModernBertForMaskedLM)
  for batches like this one (unpacked)."""
  inputs = {k: v for k, v in model_inputs(model, example_batch).items()
            if k not in PACKED_INPUTS}
  return lambda rng: model.init(rng, **inputs)["params"]


def pair_weights(batch: steps.Batch) -> jax.Array:
  """1 for each pair of a batch: [B], or [R, E] of packed rows, where an
  empty slot weighs 0."""
  if "example_mask" in batch:
    return batch["example_mask"].astype(jnp.float32)
  return jnp.ones(batch["nsp_labels"].shape, jnp.float32)


def totals(batch: steps.Batch) -> dict[str, jax.Array]:
  """The normalizers of a batch's losses: its real MLM predictions (by
  `masked_weights`) and its pairs (for NSP, and CP in training)."""
  pairs = pair_weights(batch).sum()
  return dict(mlm=jnp.maximum(batch["masked_weights"].astype(jnp.float32).sum(), 1.0),
              nsp=pairs, cp=pairs)


def losses(outputs: dict, batch: steps.Batch,
           batch_totals: dict | None = None) -> dict[str, jax.Array]:
  """MLM loss (summed over real predictions, by `masked_weights`) and NSP
  loss (summed over pairs; a model without an NSP head has none), each
  divided by its total in `batch_totals` (the batch's own by default: their
  means), with the counts that make accuracies; all float32 scalars."""
  batch_totals = batch_totals or totals(batch)
  logits_BxPxV = outputs["mlm_logits"]
  weights_BxP = batch["masked_weights"].astype(jnp.float32)
  log_probs_BxPxV = jax.nn.log_softmax(logits_BxPxV)
  target_logp_BxP = jnp.take_along_axis(log_probs_BxPxV, batch["masked_ids"][..., None],
                                        -1)[..., 0]
  mlm_correct = ((logits_BxPxV.argmax(-1) == batch["masked_ids"]) * weights_BxP).sum()
  parts = dict(mlm_loss=-(target_logp_BxP * weights_BxP).sum() / batch_totals["mlm"],
               mlm_correct=mlm_correct.astype(jnp.float32), mlm_count=weights_BxP.sum())
  if "nsp_logits" not in outputs:
    return parts
  # Pairs: [B] one a row, [R, E] in packed rows.
  pairs = pair_weights(batch)
  nsp_log_probs = jax.nn.log_softmax(outputs["nsp_logits"])
  nsp_logp = jnp.take_along_axis(nsp_log_probs, batch["nsp_labels"][..., None], -1)[..., 0]
  nsp_correct = ((outputs["nsp_logits"].argmax(-1) == batch["nsp_labels"]) * pairs).sum()
  return dict(parts, nsp_loss=-(nsp_logp * pairs).sum() / batch_totals["nsp"],
              nsp_correct=nsp_correct, nsp_count=pairs.sum())


def make_loss(model: nn.Module, weights: LossWeights = LossWeights()):
  """Returns `loss_fn(params, batch, rng, totals=None) -> (loss, parts)`:
  the weighted sum of the MLM, NSP (and CP) losses of forward passes with
  dropout, normalized by `totals` (see `losses`)."""

  def loss_fn(params, batch, rng, batch_totals=None):
    batch_totals = batch_totals or totals(batch)
    outputs = model.apply({"params": params}, **model_inputs(model, batch),
                          deterministic=False, rngs={"dropout": rng})
    parts = losses(outputs, batch, batch_totals)
    loss = weights.mlm * parts["mlm_loss"]
    if "nsp_loss" in parts:
      loss = loss + weights.nsp * parts["nsp_loss"]
    if weights.cp:
      parts.update(contrastive.losses(_pooled(model, params, rng), batch,
                                      weights.cp_temperature, dropout_views=True,
                                      denominator=batch_totals["cp"]))
      loss = loss + weights.cp * parts["cp_loss"]
    return loss, parts

  return loss_fn


def _pooled(model: nn.Module, params, rng=None):
  """`(inputs, stream) -> pooled output [B, D]` of one segment, with dropout
  stream `stream` of `rng` (no dropout without one)."""

  def pooled(inputs, stream):
    if rng is None:
      return model.apply({"params": params}, **inputs, method="pooled")
    return model.apply({"params": params}, **inputs, deterministic=False, method="pooled",
                       rngs={"dropout": jax.random.fold_in(rng, stream + 1)})

  return pooled


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    weights: LossWeights = LossWeights(), accum_steps: int = 1,
                    schedule=None):
  """Returns `train_step(state, batch, rng) -> (state, metrics)`: MLM, NSP
  (and CP) losses, weighted, with their accuracies; with `accum_steps`
  micro-batches, the full batch's exactly."""

  def summarize(parts):
    metrics = dict(mlm_loss=parts["mlm_loss"],
                   mlm_accuracy=parts["mlm_correct"] / jnp.maximum(parts["mlm_count"], 1))
    if "nsp_loss" in parts:
      metrics.update(nsp_loss=parts["nsp_loss"],
                     nsp_accuracy=parts["nsp_correct"] / parts["nsp_count"])
    if "cp_loss" in parts:
      metrics.update(cp_loss=parts["cp_loss"],
                     cp_accuracy=parts["cp_correct"] / jnp.maximum(parts["cp_count"], 1))
    return metrics

  mlm_nsp = dataclasses.replace(weights, cp=0.0)
  return steps.make_step(make_loss(model, mlm_nsp), tx, accum_steps, schedule, summarize,
                         totals, _contrastive(model, weights) if weights.cp else None)


def _contrastive(model: nn.Module, weights: LossWeights) -> steps.Across:
  """CP as a term over the whole batch: its negatives are every pair of
  the batch, micro-batches or not (training's views, see `make_loss`)."""

  def embed(params, batch, rng):
    a, b, _ = contrastive.views(batch, dropout_views=True)
    pooled = _pooled(model, params, rng)
    flat = contrastive.flat_pairs
    return flat(pooled(a, 0)), flat(pooled(b, 1)), pair_weights(batch).reshape(-1)

  def loss(embeddings, batch_totals):
    a_MxD, b_MxD, valid_M = embeddings  # valid: 0 for packed rows' empty slots
    parts = contrastive.info_nce(a_MxD, b_MxD, jnp.ones(a_MxD.shape[0], bool),
                                 weights.cp_temperature, batch_totals["cp"], valid_M)
    return weights.cp * parts["cp_loss"], parts

  return steps.Across(embed, loss)


def make_eval_step(model: nn.Module, weights: LossWeights = LossWeights()):
  """Returns `eval_step(params, batch) -> sums` (losses weighted by counts,
  correct predictions and counts), to be added over an evaluation set; CP's
  too when it has a weight (negatives: the evaluation batch's)."""

  def eval_step(params, batch: steps.Batch):
    parts = losses(model.apply({"params": params}, **model_inputs(model, batch)), batch)
    sums = dict(mlm_loss_sum=parts["mlm_loss"] * parts["mlm_count"],
                mlm_correct=parts["mlm_correct"], mlm_count=parts["mlm_count"])
    if "nsp_loss" in parts:
      sums.update(nsp_loss_sum=parts["nsp_loss"] * parts["nsp_count"],
                  nsp_correct=parts["nsp_correct"], nsp_count=parts["nsp_count"])
    if weights.cp:
      cp = contrastive.losses(_pooled(model, params), batch, weights.cp_temperature)
      sums.update(cp_loss_sum=cp["cp_loss"] * cp["cp_count"], cp_correct=cp["cp_correct"],
                  cp_count=cp["cp_count"])
    return sums

  return eval_step


def evaluate(eval_step, params, batches) -> dict[str, float]:
  """`eval_` losses and accuracies of `params` over `batches`."""
  sums = None
  for batch in batches:
    out = parallel.in_order(eval_step(params, batch))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  mlm_count = max(sums["mlm_count"], 1.0)
  mlm_loss = sums["mlm_loss_sum"] / mlm_count
  scores = dict(eval_mlm_loss=float(mlm_loss), eval_loss=float(mlm_loss),
                eval_mlm_accuracy=float(sums["mlm_correct"] / mlm_count))
  if "nsp_count" in sums:  # a model with an NSP head
    nsp_count = max(sums["nsp_count"], 1.0)
    nsp_loss = sums["nsp_loss_sum"] / nsp_count
    scores.update(eval_nsp_loss=float(nsp_loss), eval_loss=float(mlm_loss + nsp_loss),
                  eval_nsp_accuracy=float(sums["nsp_correct"] / nsp_count))
  if "cp_count" in sums:
    cp_count = max(sums["cp_count"], 1.0)
    scores.update(eval_cp_loss=float(sums["cp_loss_sum"] / cp_count),
                  eval_cp_accuracy=float(sums["cp_correct"] / cp_count))
  return scores


def target_counts(host_batches: list[dict], vocab_size: int) -> np.ndarray:
  """How often each token is an MLM target [V], then each NSP label [2], in
  host batches: counts that add up over processes."""
  targets = np.concatenate([b["masked_ids"][b["masked_weights"] > 0] for b in host_batches])
  labels = np.concatenate([b["nsp_labels"][b["example_mask"] > 0] if "example_mask" in b
                           else b["nsp_labels"] for b in host_batches])
  return np.concatenate([np.bincount(targets, minlength=vocab_size),
                         np.bincount(labels, minlength=2)]).astype(np.int32)


def baselines(counts: np.ndarray) -> dict[str, float]:
  """Accuracy of always predicting the most frequent target token, and of
  always answering the more common NSP label, from `target_counts`."""
  tokens, labels = counts[:-2], counts[-2:]
  return dict(baseline_mlm_accuracy=float(tokens.max() / max(tokens.sum(), 1)),
              baseline_nsp_accuracy=float(labels.max() / max(labels.sum(), 1)))
