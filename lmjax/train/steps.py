"""The generic pure step: `train_step(state, batch, rng) -> (state, metrics)`
for any loss, the TrainState it updates, and their sharded creation and jit.

Objectives (lmjax.train.mlm_nsp, lmjax.train.classification) supply the loss;
everything else is an argument, so a research script can call these with no
flags and no files.
"""

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Across:
  """A loss term over the whole batch that does not split into a sum over
  micro-batches (in-batch negatives): `embed(params, batch, rng)` gives
  each example's embeddings (arrays [b, ...]), `loss(embeddings, totals) ->
  (loss, parts)` the term over the whole batch's.

  With accumulation its gradient is GradCache's (Gao et al., 2021): every
  micro-batch's embeddings first, without a gradient; the term and its
  gradient with respect to them over the whole batch; then each
  micro-batch's backward pass through `embed` with its share of that
  gradient. Exact, for a second forward pass of `embed`.
  """
  embed: Callable
  loss: Callable


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, accum_steps: int = 1,
              schedule: Callable | None = None, summarize: Callable = lambda parts: parts,
              totals: Callable[[Batch], dict] | None = None, across: Across | None = None):
  """Returns `train_step(state, batch, rng) -> (state, metrics)` for any loss.

  `loss_fn(params, batch, rng) -> (loss, parts)`. The batch is split into
  `accum_steps` micro-batches whose gradients are summed in a `lax.scan`
  before one optimizer update (as big_vision does), so a step always means
  one update. `summarize(parts)` turns the parts into the step's metrics,
  next to loss, grad_norm, learning_rate and (for batches of tokens) the
  real tokens and their share of the batch (`real_tokens`). Dropout keys are
  `fold_in(rng, step)` (and the micro-batch's index).

  With `totals(batch) -> {name: count}` (the full batch's normalizers: its
  masked tokens, its examples), the loss is
  `loss_fn(params, batch, rng, totals)`, each of its terms a sum over the
  batch divided by its total: the micro-batches' losses, parts and
  gradients then add up to the full batch's exactly, whatever each one's
  counts. Without, losses and parts named `*loss` are averaged over
  micro-batches (exact when they hold equal counts), the others summed.
  `across` adds a term over the whole batch (see Across; with `totals`).
  """
  gradients = (_accumulated(loss_fn, accum_steps, totals, across) if accum_steps > 1
               else _whole(loss_fn, totals, across))

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    (loss, parts), grads = gradients(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(loss=loss, **summarize(parts), grad_norm=optax.tree.norm(grads))
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    if "input_mask" in batch:
      metrics.update(real_tokens(batch))
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def real_tokens(batch: Batch) -> dict[str, jax.Array]:
  """The real (not padding) tokens of a batch, and their share of its token
  positions."""
  mask = batch["input_mask"]
  tokens = mask.astype(jnp.float32).sum()
  return dict(real_tokens=tokens, real_token_fraction=tokens / mask.size)


def _whole(loss_fn, totals, across):
  """`(params, batch, rng) -> ((loss, parts), grads)` in one pass."""

  def loss(params, batch, rng):
    fixed = () if totals is None else (totals(batch),)
    value, parts = loss_fn(params, batch, rng, *fixed)
    if across is not None:
      extra, extra_parts = across.loss(across.embed(params, batch, rng), *fixed)
      value, parts = value + extra, {**parts, **extra_parts}
    return value, parts

  return jax.value_and_grad(loss, has_aux=True)


def _accumulated(loss_fn, k, totals, across):
  """`(params, batch, rng) -> ((loss, parts), grads)` summed over k
  micro-batches in a scan; micro-batch i takes rows i, i+k, i+2k, ...:
  every device's shard of the batch feeds every micro-batch equally."""

  def with_cache(params, batch, rng, fixed, cached):
    """The micro-batch's loss; its gradient carries the `across` term's
    through the embeddings (their cached gradient as a constant)."""
    value, parts = loss_fn(params, batch, rng, *fixed)
    if cached is None:
      return value, (value, parts)
    embedded = across.embed(params, batch, rng)
    pulled = sum(jnp.vdot(e, jax.lax.stop_gradient(g)) for e, g in
                 zip(jax.tree.leaves(embedded), jax.tree.leaves(cached), strict=True))
    return value + pulled, (value, parts)

  grad_fn = jax.grad(with_cache, has_aux=True)

  def gradients(params, batch, rng):
    fixed = () if totals is None else (totals(batch),)
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1),
                         batch)
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(k))
    cached, extra = None, None
    if across is not None:
      embedded = jax.lax.map(lambda xs: across.embed(params, xs[1], xs[0]), (keys, micro))
      whole = jax.tree.map(lambda e: e.reshape(-1, *e.shape[2:]), embedded)
      extra, cached = jax.value_and_grad(across.loss, has_aux=True)(whole, *fixed)
      cached = jax.tree.map(lambda g, e: g.reshape(e.shape), cached, embedded)

    def accumulate(carry, inputs):
      key, micro_batch, cached_i = inputs
      grads, (value, parts) = grad_fn(params, micro_batch, key, fixed, cached_i)
      return jax.tree.map(jnp.add, carry, ((value, parts), grads)), None

    first = jax.tree.map(lambda x: x[0], (micro, cached))
    shapes = jax.eval_shape(lambda m, c: grad_fn(params, m, rng, fixed, c), *first)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[1], shapes[0]))
    ((value, parts), grads), _ = jax.lax.scan(accumulate, zeros, (keys, micro, cached))
    if across is not None:
      value, parts = value + extra[0], {**parts, **extra[1]}
    if totals is not None:
      return (value, parts), grads
    parts = {n: v / k if n.endswith("loss") else v for n, v in parts.items()}
    return (value / k, parts), jax.tree.map(lambda g: g / k, grads)

  return gradients


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
