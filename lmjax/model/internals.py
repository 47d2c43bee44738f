"""What a model computes on the way, on request: every layer's attention
probabilities and hidden states, for BERT and ModernBERT alike.

The layers sow them into the `intermediates` collection only when the
caller makes it mutable, as `apply_with_internals` does; attention then runs
the explicit softmax instead of the fused kernel. Training and evaluation
never ask, so they pay nothing for it. Pure: no I/O.
"""

import re
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.layers import INTERNALS


@flax.struct.dataclass
class Internals:
  """hidden_states [layers + 1, B, L, D]: the embeddings as the first layer
  reads them, then each layer's output (ModernBERT's last before its final
  norm); attention_probs [layers, B, N, L, L]: each layer's weights of a
  query (third axis) over the keys (last axis), 0 on padding and, in
  ModernBERT's local layers, outside the window."""
  hidden_states: jax.Array
  attention_probs: jax.Array


def apply_with_internals(model: nn.Module, variables: dict, *args: Any,
                         **kwargs: Any) -> tuple[Any, Internals]:
  """`model.apply(variables, *args, **kwargs)` and the internals of its
  encoder. Jit it with the model static:
  `jax.jit(functools.partial(apply_with_internals, model))`."""
  outputs, state = model.apply(variables, *args, mutable=INTERNALS, **kwargs)
  sown = state.get(INTERNALS, {})
  return outputs, Internals(hidden_states=_stacked(sown, "hidden_states"),
                            attention_probs=_stacked(sown, "attention_probs"))


def _stacked(tree: dict, name: str) -> jax.Array:
  """The values sown as `name`, in the order of the layers, on one leading
  axis: a module outside the layers (the embeddings) first, then
  `layers_0, layers_1, ...` (a loop) or `layers` (a scan: stacked already)."""
  found = []  # (order, value with a leading layers axis)

  def visit(node, order, stacked):
    for key, value in node.items():
      if key == name:
        found.append((order, value[0] if stacked else value[0][None]))
      elif isinstance(value, dict):
        match = re.fullmatch(r"layers(?:_(\d+))?", key)
        if match:
          visit(value, int(match.group(1) or 0), match.group(1) is None)
        else:
          visit(value, order, stacked)

  visit(tree, -1, False)
  if not found:
    raise ValueError(f"the model sowed no {name}: is it an lmjax BERT or ModernBERT?")
  found.sort(key=lambda item: item[0])
  return jnp.concatenate([value for _, value in found], axis=0)


def pooled_layers(hidden_states_LxBxTxD: jax.Array,
                  input_mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Each layer's features of each example, in float32: (the mean over its
  real tokens, its first token's: [CLS]), each [layers + 1, B, D]."""
  hidden = hidden_states_LxBxTxD.astype(jnp.float32)
  mask_BxT = input_mask_BxT.astype(jnp.float32)
  count_B = jnp.maximum(mask_BxT.sum(-1), 1.0)
  mean_LxBxD = jnp.einsum("lbtd,bt->lbd", hidden, mask_BxT) / count_B[None, :, None]
  return mean_LxBxD, hidden[:, :, 0]
