"""The optax chain of a training config: schedule, clipping, AdamW or LAMB."""

import jax
import jax.numpy as jnp
import optax

from lmjax.errors import ConfigError, check_fields

OPTIMIZERS = ("adamw", "lamb")
SCHEDULES = ("linear", "cosine", "one_cycle", "warmup_stable_decay")
# one_cycle starts at the peak over this, as Smith and Topin's 1cycle (and
# PyTorch's OneCycleLR) does, and ends at it over _ONE_CYCLE_FINAL_DIV more
# unless end_learning_rate_fraction names the end.
_ONE_CYCLE_DIV, _ONE_CYCLE_FINAL_DIV = 25.0, 1e4


def learning_rate_schedule(train) -> optax.Schedule:
  """The learning rate at each step of a `train` section:

    linear, cosine: warm-up from 0 to `learning_rate` over `warmup_steps`,
      then linear or cosine decay to the end rate at `steps`;
    one_cycle: Smith and Topin's 1cycle, a cosine rise from the peak / 25
      to the peak at `warmup_steps`, then a cosine fall to the end rate
      (peak / 25 / 10^4 when end_learning_rate_fraction is 0);
    warmup_stable_decay: linear warm-up, the peak held, then a 1 - sqrt
      decay to the end rate over the last `decay_fraction` of the steps
      (ModernBERT's trapezoid).

  The end rate is `end_learning_rate_fraction * learning_rate`.
  """
  peak, warmup, steps = train.learning_rate, train.warmup_steps, train.steps
  end = peak * train.end_learning_rate_fraction
  if train.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), end)
  if train.schedule == "one_cycle":
    final_div = (_ONE_CYCLE_FINAL_DIV if not end else peak / _ONE_CYCLE_DIV / end)
    return optax.cosine_onecycle_schedule(max(steps, 1), peak, warmup / max(steps, 1),
                                          _ONE_CYCLE_DIV, final_div)
  if train.schedule == "warmup_stable_decay":
    decay = decay_steps(train)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak),
         _sqrt_decay(peak, end, decay)], [warmup, steps - decay])
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup),
       optax.linear_schedule(peak, end, max(steps - warmup, 1))], [warmup])


def decay_steps(train) -> int:
  """The steps warmup_stable_decay decays over: `decay_fraction` of them,
  at least one."""
  return max(1, round(train.decay_fraction * train.steps))


def _sqrt_decay(peak: float, end: float, steps: int) -> optax.Schedule:
  def schedule(count):
    done = jnp.clip(count / steps, 0.0, 1.0)
    return end + (peak - end) * (1.0 - jnp.sqrt(done))
  return schedule


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
  `train` section (the schedule's length is the run's to check, with
  `check_schedule` once it is known)."""
  checks = [
      ("optimizer", train.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
      ("schedule", train.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
      ("learning_rate", train.learning_rate is None or train.learning_rate > 0,
       "positive"),
      ("end_learning_rate_fraction", 0 <= train.end_learning_rate_fraction <= 1,
       "in [0, 1]"),
      ("decay_fraction", 0 < train.decay_fraction <= 1, "in (0, 1]"),
      ("weight_decay", train.weight_decay >= 0, "non-negative"),
      ("grad_clip_norm", train.grad_clip_norm >= 0, "non-negative (0 = no clipping)"),
      ("grad_accum_steps", train.grad_accum_steps >= 1, "at least 1"),
      ("batch_size", train.batch_size >= 1, "at least 1"),
      ("batch_size", train.grad_accum_steps < 1 or train.batch_size % train.grad_accum_steps == 0,
       "divisible by grad_accum_steps"),
  ]
  check_fields("config.train", train, checks)


def check_schedule(train, steps_from: str = "config.train.steps") -> None:
  """Raises ConfigError when the schedule has no room for its warm-up (and
  warmup_stable_decay for its decay) in `train.steps`; `steps_from` says
  where that count came from."""
  room = train.steps - (decay_steps(train) if train.schedule == "warmup_stable_decay" else 0)
  if train.warmup_steps > room:
    decay = (f" and {decay_steps(train)} of decay (decay_fraction={train.decay_fraction})"
             if room < train.steps else "")
    raise ConfigError(f"config.train.warmup_steps={train.warmup_steps}{decay} does not fit "
                      f"in the {train.steps} steps of {steps_from}; lower warmup_steps"
                      f"{' or decay_fraction' if decay else ''}, or give the run more steps")


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
