"""Task heads on BertModel: pretraining (MLM + NSP) and sequence classification."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmjax.model.config import ACTIVATIONS, BertConfig
from lmjax.model.encoder import BertModel
from lmjax.model.layers import Dropout, dense, layer_norm, logits_dtype, zeros_init
from lmjax.model.rows import Tokens, example_keys, mean_over_examples


class MaskedLMHead(nn.Module):
  """Dense + activation + LayerNorm, then the decoder tied to the embeddings."""

  config: BertConfig

  @nn.compact
  def __call__(self, x_BxPxD, embedding_VxD):
    """Returns logits [B, P, V] over the vocabulary, in at least float32."""
    cfg = self.config
    h_BxPxD = dense(cfg, cfg.hidden_size, ("embed", "mlp"), "transform")(x_BxPxD)
    h_BxPxD = layer_norm(cfg, "transform_norm")(ACTIVATIONS[cfg.hidden_act](h_BxPxD))
    # Pinning h to the batch layout matters: left to sharding propagation on a
    # (data, fsdp, tensor) mesh, XLA computed wrong gradients here (jax 0.10.2).
    h_BxPxD = nn.with_logical_constraint(h_BxPxD, ("batch", "length", "embed"))
    bias_V = self.param("output_bias", zeros_init(("vocab",)), (cfg.vocab_size,),
                        cfg.param_dtype)
    out_dtype = logits_dtype(cfg.dtype)
    logits_BxPxV = jnp.einsum("bpd,vd->bpv", h_BxPxD,
                              embedding_VxD.astype(h_BxPxD.dtype),
                              preferred_element_type=out_dtype)
    logits_BxPxV = logits_BxPxV + bias_V.astype(out_dtype)
    return nn.with_logical_constraint(logits_BxPxV, ("batch", "length", "vocab"))


def gather_positions(x_BxLxD, positions_BxP):
  """Returns x at the given positions of each sequence, [B, P, D]."""
  return jnp.take_along_axis(x_BxLxD, positions_BxP[..., None], axis=1)


class BertForPreTraining(nn.Module):
  """BERT with its pretraining heads.

  The MLM head runs only at `masked_positions` [B, P], never over all L
  positions, so its cost scales with P (BERT's max_predictions_per_seq).
  Packed rows of several pairs (lmjax.model.rows) give NSP logits and
  pooled outputs per pair, [B, E, ...].
  """

  config: BertConfig
  INPUTS = ("input_ids", "segment_ids", "input_mask")

  def setup(self):
    self.bert = BertModel(self.config)
    self.mlm = MaskedLMHead(self.config)
    self.nsp = dense(self.config, 2, ("embed", None), "nsp")

  def __call__(self, input_ids, segment_ids, input_mask, masked_positions,
               deterministic: bool = True, positions=None, example_index=None,
               example_starts=None) -> dict[str, jax.Array]:
    """Returns sequence_output [B,L,D], pooled_output [B,D], mlm_logits [B,P,V]
    and nsp_logits [B,2] ([B,E,D] and [B,E,2] packed); logits are float32
    (float64 in a float64 model)."""
    seq_BxLxD, pooled_BxD = self.bert(input_ids, segment_ids, input_mask,
                                      deterministic, positions, example_index,
                                      example_starts)
    mlm_logits_BxPxV = self.mlm(gather_positions(seq_BxLxD, masked_positions),
                                self.bert.word_embedding_table())
    nsp_logits_Bx2 = self.nsp(pooled_BxD).astype(logits_dtype(self.config.dtype))
    return dict(sequence_output=seq_BxLxD, pooled_output=pooled_BxD,
                mlm_logits=mlm_logits_BxPxV, nsp_logits=nsp_logits_Bx2)

  def mean_pooled(self, input_ids, segment_ids, input_mask, positions=None,
                  example_index=None, example_starts=None) -> jax.Array:
    """The last layer's mean over each example's real tokens, [B, D] (or
    [B, E, D] packed), in float32, with no dropout: features for a linear
    probe."""
    seq_BxLxD, _ = self.bert(input_ids, segment_ids, input_mask, True, positions,
                             example_index, example_starts)
    return mean_over_examples(seq_BxLxD.astype(jnp.float32), input_mask, example_index,
                              example_starts)

  def pooled(self, input_ids, segment_ids, input_mask, deterministic: bool = True,
             positions=None, example_index=None, example_starts=None) -> jax.Array:
    """The encoder's pooled output [B, D] ([B, E, D] packed) alone
    (contrastive prediction)."""
    return self.bert(input_ids, segment_ids, input_mask, deterministic, positions,
                     example_index, example_starts)[1]


class BertForSequenceClassification(nn.Module):
  """BERT with dropout + a linear layer on the pooled output (the pooler at
  [CLS], or on the mean of the real tokens: `config.classifier_pooling`).

  `num_labels` classes give classification logits; `num_labels=1` is a
  regressor whose single output is the predicted score. Packed rows give
  them per example, [B, E, num_labels].
  """

  config: BertConfig
  num_labels: int
  INPUTS = ("input_ids", "segment_ids", "input_mask")

  def setup(self):
    if self.num_labels < 1:
      raise ValueError(f"num_labels must be positive, got {self.num_labels}")
    self.bert = BertModel(self.config)
    self.dropout = Dropout(self.config.dropout_rate)
    self.classifier = dense(self.config, self.num_labels, ("embed", None),
                            "classifier")

  def __call__(self, input_ids, segment_ids, input_mask, deterministic: bool = True,
               positions=None, example_index=None, example_starts=None) -> jax.Array:
    """Returns logits [B, num_labels] ([B, E, num_labels] packed), in at
    least float32."""
    _, pooled_BxD = self.bert(input_ids, segment_ids, input_mask, deterministic,
                              positions, example_index, example_starts,
                              pooling=self.config.classifier_pooling)
    keys = None
    if example_starts is not None:
      keys = example_keys(Tokens.of(input_mask, positions, example_index), example_starts,
                          pooled_BxD.shape[-1])
    pooled_BxD = self.dropout(pooled_BxD, deterministic, keys)
    return self.classifier(pooled_BxD).astype(logits_dtype(self.config.dtype))
