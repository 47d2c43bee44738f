"""The generic pure step: `train_step(state, batch, rng) -> (state, metrics)`
for any loss, the TrainState it updates, and their sharded creation and jit.

Objectives (lmjax.train.mlm_nsp, lmjax.train.classification) supply the loss;
everything else is an argument, so a research script can call these with no
flags and no files.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lmjax import parallel

Batch = dict[str, jax.Array]
# rng -> logically annotated parameters (a linen `init(...)["params"]`).
InitParams = Callable[[jax.Array], Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer updates done so far
  params: Any
  opt_state: Any


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, accum_steps: int = 1,
              schedule: Callable | None = None, summarize: Callable = lambda parts: parts,
              totals: Callable[[Batch], dict] | None = None):
  """Returns `train_step(state, batch, rng) -> (state, metrics)` for any loss.

  `loss_fn(params, batch, rng) -> (loss, parts)`. The batch is split into
  `accum_steps` micro-batches whose gradients are summed in a `lax.scan`
  before one optimizer update (as big_vision does), so a step always means
  one update. `summarize(parts)` turns the parts into the step's metrics,
  next to loss, grad_norm and learning_rate. Dropout keys are
  `fold_in(rng, step)` (and the micro-batch's index).

  With `totals(batch) -> {name: count}` (the full batch's normalizers: its
  masked tokens, its examples), the loss is
  `loss_fn(params, batch, rng, totals)`, each of its terms a sum over the
  batch divided by its total: the micro-batches' losses, parts and
  gradients then add up to the full batch's exactly, whatever each one's
  counts. Without, losses and parts named `*loss` are averaged over
  micro-batches (exact when they hold equal counts), the others summed.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def gradients(params, batch, rng):
    fixed = () if totals is None else (totals(batch),)
    if accum_steps == 1:
      return grad_fn(params, batch, rng, *fixed)
    # Micro-batch i takes rows i, i+k, i+2k, ...: every device's shard of
    # the batch feeds every micro-batch equally.
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum_steps, accum_steps,
                                             *x.shape[1:]).swapaxes(0, 1), batch)

    def accumulate(carry, inputs):
      i, micro_batch = inputs
      out = grad_fn(params, micro_batch, jax.random.fold_in(rng, i), *fixed)
      return jax.tree.map(jnp.add, carry, out), None

    shapes = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng,
                            *fixed)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    ((loss, parts), grads), _ = jax.lax.scan(accumulate, zeros,
                                             (jnp.arange(accum_steps), micro))
    if totals is not None:
      return (loss, parts), grads
    parts = {k: v / accum_steps if k.endswith("loss") else v for k, v in parts.items()}
    return (loss / accum_steps, parts), jax.tree.map(lambda g: g / accum_steps, grads)

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    (loss, parts), grads = gradients(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(loss=loss, **summarize(parts), grad_norm=optax.tree.norm(grads))
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def _state_init(init_params: InitParams, tx: optax.GradientTransformation):
  def init(rng):
    params = init_params(rng)
    return TrainState(jnp.int32(0), params, tx.init(params))
  return init


def create_train_state(init_params: InitParams, tx: optax.GradientTransformation, mesh,
                       rng: jax.Array, rules=parallel.RULES):
  """Returns (state, state shardings): parameters and optimizer moments are
  created directly in the shardings their logical axes give."""
  return parallel.sharded_init(_state_init(init_params, tx), mesh, rng, rules=rules)


def abstract_params(init_params: InitParams, mesh, rules=parallel.RULES):
  """The parameters `init_params` would make, as ShapeDtypeStructs that carry
  their shardings (a checkpoint's restore target); nothing is allocated."""
  with parallel.sharding_context(mesh, rules):
    abstract = jax.eval_shape(init_params, jax.random.key(0))
    shardings = parallel.logical_shardings(abstract, mesh, rules)
  return abstract_like(nn.unbox(abstract), shardings)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` carrying `shardings`: a restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def jit_train_step(train_step, state_shardings, mesh, rules=parallel.RULES):
  """Jits `train_step` with its shardings; the state's buffers are donated."""
  batch = parallel.batch_sharding(mesh, rules)
  step = jax.jit(train_step, in_shardings=(state_shardings, batch, parallel.replicated(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=0)
  return _with_rules(step, mesh, rules)


def jit_eval_step(eval_step, params_shardings, mesh, rules=parallel.RULES):
  """Jits `eval_step(params, batch)`; its outputs are replicated."""
  batch = parallel.batch_sharding(mesh, rules)
  step = jax.jit(eval_step, in_shardings=(params_shardings, batch),
                 out_shardings=parallel.replicated(mesh))
  return _with_rules(step, mesh, rules)


def _with_rules(jitted, mesh, rules):
  """`jitted`, called and lowered where the model's logical axes map to
  `mesh` by `rules` (they are read while tracing)."""

  @functools.wraps(jitted)
  def wrapped(*args):
    with parallel.sharding_context(mesh, rules):
      return jitted(*args)

  def lower(*args):
    with parallel.sharding_context(mesh, rules):
      return jitted.lower(*args)

  wrapped.lower = lower  # ahead-of-time compilation, as jax.jit's
  return wrapped
