"""The optax chain of a training config: schedule, clipping, AdamW or LAMB."""

import jax
import optax

from lmjax.errors import check_fields

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("linear", "cosine")


def learning_rate_schedule(train) -> optax.Schedule:
  """Linear warm-up from 0 to `learning_rate`, then linear or cosine decay
  to `end_learning_rate_fraction * learning_rate` at `steps`."""
  peak, warmup, steps = train.learning_rate, train.warmup_steps, train.steps
  end = peak * train.end_learning_rate_fraction
  if train.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), end)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup),
       optax.linear_schedule(peak, end, max(steps - warmup, 1))], [warmup])


def decay_mask(params) -> dict:
  """True for the parameters weight decay applies to: not LayerNorm
  parameters and not biases, as in BERT."""

  def decays(path, _):
    names = [str(getattr(k, "key", "")) for k in path]
    names = [n for n in names if n]  # drop the boxes' attribute keys
    return not (names[-1] in ("bias", "output_bias") or
                any(n.endswith("norm") for n in names[:-1]))

  return jax.tree_util.tree_map_with_path(decays, params)


def check_config(train) -> None:
  """Raises ConfigError naming the first impossible optimizer field of a
  `train` section (the schedule's length is the run's to check)."""
  checks = [
      ("optimizer", train.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
      ("schedule", train.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
      ("learning_rate", train.learning_rate > 0, "positive"),
      ("end_learning_rate_fraction", 0 <= train.end_learning_rate_fraction <= 1,
       "in [0, 1]"),
      ("weight_decay", train.weight_decay >= 0, "non-negative"),
      ("grad_clip_norm", train.grad_clip_norm >= 0, "non-negative (0 = no clipping)"),
      ("grad_accum_steps", train.grad_accum_steps >= 1, "at least 1"),
      ("batch_size", train.batch_size >= 1, "at least 1"),
      ("batch_size", train.grad_accum_steps < 1 or train.batch_size % train.grad_accum_steps == 0,
       "divisible by grad_accum_steps"),
  ]
  check_fields("config.train", train, checks)


def create_optimizer(train) -> optax.GradientTransformation:
  """Returns clip -> AdamW/LAMB (BERT's b1, b2, eps; decay masked) with the
  schedule; gradient accumulation happens in the train step. The section
  is checked by `check_config` first."""
  schedule = learning_rate_schedule(train)
  make = optax.adamw if train.optimizer == "adamw" else optax.lamb
  chain = []
  if train.grad_clip_norm:
    chain.append(optax.clip_by_global_norm(train.grad_clip_norm))
  chain.append(make(schedule, b1=train.b1, b2=train.b2, eps=train.eps,
                    weight_decay=train.weight_decay, mask=decay_mask))
  return optax.chain(*chain)
