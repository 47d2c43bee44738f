"""The encoder stack and BertModel: embeddings -> layers -> [CLS] pooler."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.config import REMAT_POLICIES, BertConfig
from lmjax.model.layers import INTERNALS, Embeddings, EncoderLayer, dense
from lmjax.model.rows import Tokens, at_starts, mean_over_examples


def _layer_step(layer, x_BxLxD, tokens, deterministic):
  """Scan body: one layer, carrying the hidden states."""
  return layer(x_BxLxD, tokens, deterministic), None


def rematted(layer_cls, cfg, deterministic_argnum: int):
  """`layer_cls` under the config's remat policy (itself for 'none');
  `deterministic_argnum` (counting self) is static, a Python bool."""
  if cfg.remat_policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat_policy],
                  prevent_cse=not cfg.scan_layers, static_argnums=(deterministic_argnum,))


class Encoder(nn.Module):
  """`num_layers` encoder layers, as a Python loop or one `nn.scan`.

  Loop parameters live under `layers_0 .. layers_{n-1}`; scanned ones under
  `layers`, stacked on a leading axis named 'layers'. Both compute the same
  function; `lmjax.interop.hf` converts between the layouts.
  """

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxLxD, tokens: Tokens | jax.Array, deterministic: bool):
    """`tokens`: their layout (lmjax.model.rows), or a mask [B, L] that is 1
    on real tokens."""
    cfg = self.config
    tokens = tokens if isinstance(tokens, Tokens) else Tokens.of(tokens)
    # Argument 3 (counting self) is `deterministic`, a Python bool.
    layer_cls = rematted(EncoderLayer, cfg, deterministic_argnum=3)
    if not cfg.scan_layers:
      for i in range(cfg.num_layers):
        x_BxLxD = layer_cls(cfg, name=f"layers_{i}")(x_BxLxD, tokens, deterministic)
      return x_BxLxD
    scan = nn.scan(
        _layer_step, variable_axes={"params": 0, INTERNALS: 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})
    x_BxLxD, _ = scan(layer_cls(cfg, name="layers"), x_BxLxD, tokens, deterministic)
    return x_BxLxD


class BertModel(nn.Module):
  """BERT's encoder: returns (sequence output [B, L, D], pooled output [B, D]).

  The pooler reads the last layer at [CLS] (`pooling='cls'`, BERT's) or its
  mean over each example's real tokens (`pooling='mean'`).

  Packed rows (lmjax.model.rows) add `positions` and `example_index` [B, L]
  and `example_starts` [B, E]; the pooled output is then each example's,
  [B, E, D].
  """

  config: BertConfig
  INPUTS = ("input_ids", "segment_ids", "input_mask")

  def setup(self):
    self.embeddings = Embeddings(self.config)
    self.encoder = Encoder(self.config)
    self.pooler = dense(self.config, self.config.hidden_size, ("embed", "mlp"),
                        "pooler")

  def __call__(self, input_ids_BxL, segment_ids_BxL, input_mask_BxL,
               deterministic: bool = True, positions=None, example_index=None,
               example_starts=None, pooling: str = "cls"):
    tokens = Tokens.of(input_mask_BxL, positions, example_index)
    x_BxLxD = self.embeddings(input_ids_BxL, segment_ids_BxL, deterministic, tokens)
    x_BxLxD = self.encoder(x_BxLxD, tokens, deterministic)
    if pooling == "cls":
      pooled_BxD = at_starts(x_BxLxD, example_starts)
    else:
      pooled_BxD = mean_over_examples(x_BxLxD, input_mask_BxL, example_index, example_starts)
    pooled_BxD = jnp.tanh(self.pooler(pooled_BxD))
    pooled_BxD = nn.with_logical_constraint(
        pooled_BxD, ("batch", "embed") if example_starts is None else ("batch", None, "embed"))
    return x_BxLxD, pooled_BxD

  def word_embedding_table(self) -> jax.Array:
    return self.embeddings.word_embedding_table()


def stack_layers(encoder_params: dict) -> dict:
  """Loop layout (`layers_0 .. layers_{n-1}`) -> scan layout (`layers`)."""
  count = sum(1 for k in encoder_params if k.startswith("layers_"))
  layers = [encoder_params[f"layers_{i}"] for i in range(count)]
  return {"layers": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(encoder_params: dict) -> dict:
  """Scan layout (`layers`) -> loop layout (`layers_0 .. layers_{n-1}`)."""
  stacked = encoder_params["layers"]
  count = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  return {f"layers_{i}": jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
          for i in range(count)}
