"""BertConfig validation, named sizes, parameter counts and FLOPs."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import pytest
from helpers import dot_flops

from lmjax.errors import ConfigError, UserError
from lmjax.model import BertConfig, BertForPreTraining, param_count
from lmjax.model.costs import flops_per_token, forward_flops
from lmjax.model.heads import BertForSequenceClassification


@pytest.mark.parametrize("size,layers,hidden,heads", [
    ("tiny", 2, 128, 2), ("mini", 4, 256, 4), ("small", 4, 512, 8),
    ("medium", 8, 512, 8), ("base", 12, 768, 12), ("large", 24, 1024, 16)])
def test_named_sizes_follow_bert(size, layers, hidden, heads):
  cfg = BertConfig.named(size)
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads) == (layers, hidden, heads)
  assert cfg.intermediate_size == 4 * hidden
  assert BertConfig.named(size, vocab_size=100).vocab_size == 100


def test_base_parameter_count_is_berts():
  # bert-base-uncased: 109,482,240 in BertModel; the pretraining heads add
  # the MLM transform (768*768 + 768), its LayerNorm, the output bias and NSP.
  cfg = BertConfig.named("base")
  assert param_count(cfg, head="encoder") == 109_482_240
  assert param_count(cfg) == 109_482_240 + 768 * 768 + 768 + 2 * 768 + 30522 + 2 * 768 + 2


@pytest.mark.parametrize("field,value,words", [
    ("num_heads", 5, "divisible by num_heads"),
    ("remat_policy", "everything", "remat_policy"),
    ("attention_impl", "flash", "attention_impl"),
    ("dtype", "int8", "dtype"),
    ("dropout_rate", 1.5, "dropout_rate"),
    ("vocab_size", 0, "vocab_size"),
    ("hidden_act", "tanh", "hidden_act"),
    ("layer_norm_eps", 0.0, "layer_norm_eps"),
])
def test_invalid_values_name_the_field(field, value, words):
  with pytest.raises(ConfigError, match=words) as info:
    BertConfig(**{field: value})
  assert isinstance(info.value, ValueError) and isinstance(info.value, UserError)
  assert "\n" not in str(info.value)


def test_cudnn_attention_refuses_attention_dropout():
  with pytest.raises(ConfigError, match="attention_dropout_rate"):
    BertConfig(attention_impl="cudnn")
  assert BertConfig(attention_impl="cudnn", attention_dropout_rate=0.0)


def test_unknown_size_or_field_is_an_error():
  with pytest.raises(ConfigError, match="size"):
    BertConfig.named("huge")
  with pytest.raises(ConfigError, match="no field 'hidden'"):
    BertConfig.named("tiny", hidden=3)


def _leaf_count(variables):
  return sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(variables)))


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_param_count_matches_initialised_models(scan):
  cfg = BertConfig(vocab_size=101, hidden_size=24, num_layers=3, num_heads=4,
                   intermediate_size=50, max_position=40, type_vocab_size=3,
                   scan_layers=scan)
  ids = jnp.zeros((1, 8), jnp.int32)
  pretraining = BertForPreTraining(cfg).init(jax.random.key(0), ids, ids, ids,
                                             ids[:, :2])
  assert _leaf_count(pretraining) == param_count(cfg)
  classifier = BertForSequenceClassification(cfg, num_labels=5).init(
      jax.random.key(0), ids, ids, ids)
  assert _leaf_count(classifier) == param_count(cfg, "classification", 5)


def test_forward_flops_equal_the_matmuls_jax_traces():
  cfg = BertConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
                   intermediate_size=48, max_position=64)
  batch, length, preds = 3, 20, 5
  ids = jnp.zeros((batch, length), jnp.int32)
  positions = jnp.zeros((batch, preds), jnp.int32)
  model = BertForPreTraining(cfg)
  variables = model.init(jax.random.key(0), ids, ids, ids, positions)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, ids, ids, ids, positions))(
      variables)
  assert dot_flops(jaxpr.jaxpr) == batch * forward_flops(cfg, length, preds)
  assert flops_per_token(cfg, length, preds) == pytest.approx(
      3 * forward_flops(cfg, length, preds) / length)
