"""Parameter counts and FLOPs of a BertConfig (or a ModernBertConfig), for
sizing runs and MFU."""

from lmjax.model.config import BertConfig
from lmjax.model.modernbert import ModernBertConfig

HEADS = ("encoder", "pretraining", "classification")


def param_count(config: BertConfig, head: str = "pretraining",
                num_labels: int = 2) -> int:
  """Returns the number of parameters, counting the tied MLM decoder once.

  `head` is 'encoder' (BertModel with pooler), 'pretraining' (+ MLM and NSP
  heads) or 'classification' (+ a `num_labels`-way linear layer).
  """
  if head not in HEADS:
    raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
  d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  embeddings = (v + config.max_position + config.type_vocab_size) * d + 2 * d
  layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
  pooler = d * d + d
  total = embeddings + config.num_layers * layer + pooler
  if head == "pretraining":
    total += (d * d + d) + 2 * d + v  # transform, its LayerNorm, output bias
    total += 2 * d + 2  # next-sentence classifier
  elif head == "classification":
    total += num_labels * d + num_labels
  return total


def forward_flops(config: BertConfig | ModernBertConfig, seq_len: int,
                  num_predictions: int) -> int:
  """Returns the matmul FLOPs of one BertForPreTraining (or
  ModernBertForMaskedLM) forward pass on one sequence of `seq_len` tokens
  with `num_predictions` MLM positions."""
  if isinstance(config, ModernBertConfig):
    return _modernbert_forward_flops(config, seq_len, num_predictions)
  d, f, v, t = (config.hidden_size, config.intermediate_size,
                config.vocab_size, seq_len)
  projections = 2 * t * (4 * d * d + 2 * d * f)  # q, k, v, out; two FFN matmuls
  attention = 2 * 2 * t * t * d  # scores and the weighted sum of values
  encoder = config.num_layers * (projections + attention)
  pooler_and_nsp = 2 * d * d + 2 * d * 2
  mlm = num_predictions * (2 * d * d + 2 * d * v)
  return encoder + pooler_and_nsp + mlm


def _modernbert_forward_flops(config: ModernBertConfig, t: int, num_predictions: int) -> int:
  """ModernBERT's: q, k, v and out projections, the GeGLU's 2F-wide input
  and F-wide output; a local layer's query attends to at most
  local_window + 1 keys (the window's useful work: the masked rest of a
  dense score matrix is not counted); the MLM head (dense, decoder)."""
  d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
  projections = 2 * t * (4 * d * d + 3 * d * f)
  encoder = 0
  for layer in range(config.num_layers):
    keys = t if config.is_global(layer) else min(t, config.local_window + 1)
    encoder += projections + 2 * 2 * t * keys * d
  return encoder + num_predictions * (2 * d * d + 2 * d * v)


def flops_per_token(config: BertConfig | ModernBertConfig, seq_len: int,
                    num_predictions: int) -> float:
  """Returns the training FLOPs per input token (backward = 2x forward)."""
  return 3 * forward_flops(config, seq_len, num_predictions) / seq_len
