"""Packed rows: the packer's layout, and a model that computes on packed rows
what it computes on the same examples one a row, dropout included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.data import packing
from lmjax.errors import UserError
from lmjax.model import BertConfig, BertForPreTraining, BertForSequenceClassification

CFG = BertConfig(vocab_size=97, hidden_size=16, num_layers=1, num_heads=2,
                 intermediate_size=24, max_position=32)


def examples(n=12, length=24, seed=0):
  """n encoded examples of 3 to `length` tokens: [CLS] ... [SEP], padded."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, length + 1, n)
  lengths[0] = length
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(5, CFG.vocab_size, (n, length)).astype(np.int32) * mask
  ids[:, 0] = 2
  segments = ((np.arange(length)[None] >= lengths[:, None] // 2) * mask).astype(np.int32)
  return dict(input_ids=ids, segment_ids=segments, input_mask=mask,
              labels=rng.integers(0, 3, n).astype(np.int32))


def test_rows_hold_every_example_once_in_as_few_rows_as_the_tokens_allow():
  arrays = examples(n=40)
  packed = packing.pack(arrays, 24)
  lengths = arrays["input_mask"].sum(1)
  assert packed["input_mask"].shape[0] < 40
  assert packed["input_mask"].shape[0] >= -(-lengths.sum() // 24)
  found = sorted(packed["example_index"][packed["example_index"] >= 0].tolist())
  assert found == sorted(np.repeat(np.arange(40), lengths).tolist())
  for row, slot in zip(*np.nonzero(packed["example_mask"]), strict=True):
    start = packed["example_starts"][row, slot]
    i = packed["example_index"][row, start]
    n = lengths[i]
    np.testing.assert_array_equal(packed["input_ids"][row, start:start + n],
                                  arrays["input_ids"][i, :n])
    np.testing.assert_array_equal(packed["positions"][row, start:start + n], np.arange(n))
    assert packed["labels"][row, slot] == arrays["labels"][i]
  assert packing.real_token_fraction(packed) > 0.8


def test_groups_keep_the_micro_batches_and_rows_round_up():
  arrays = examples(n=24)
  packed = packing.pack(arrays, 24, groups=3, row_multiple=4)
  rows = packed["input_mask"].shape[0]
  assert rows % 12 == 0  # each group's rows split over 4 devices
  for g in range(3):
    index = packed["example_index"][g::3]
    starts = np.take_along_axis(index, packed["example_starts"][g::3], 1)
    held = sorted(starts[packed["example_mask"][g::3] > 0].tolist())
    assert held == list(range(8))  # examples g, g+3, ... as 0, 1, ...
    labels = packed["labels"][g::3][packed["example_mask"][g::3] > 0]
    order = np.argsort(starts[packed["example_mask"][g::3] > 0])
    np.testing.assert_array_equal(labels[order], arrays["labels"][g::3])
  assert packing.row_sizes(32) == tuple(range(2, 33, 2))
  assert packing.row_sizes(32, steps=32) == tuple(range(1, 33))
  with pytest.raises(ValueError, match="do not split into 3 groups"):
    packing.pack(examples(n=10), 24, groups=3)
  assert packing.row_sizes(10, 4) == (4, 8, 12)


def test_an_example_longer_than_a_row_is_a_user_error():
  with pytest.raises(UserError, match="does not fit a packed row of 16"):
    packing.pack(examples(), 16)


def _unpacked_and_packed(model, arrays, **kwargs):
  """Per-example outputs of `model` on `arrays` one a row, and packed."""
  inputs = {k: jnp.asarray(arrays[k]) for k in packing.SEQUENCE_FIELDS}
  params = nn.unbox(jax.jit(lambda: model.init(jax.random.key(0), **inputs))())["params"]
  packed = packing.pack(arrays, arrays["input_mask"].shape[1], **kwargs)
  packed_inputs = {k: jnp.asarray(packed[k]) for k in
                   (*packing.SEQUENCE_FIELDS, "positions", "example_index", "example_starts")}
  apply = jax.jit(lambda inputs: model.apply({"params": params}, **inputs, deterministic=False,
                                            rngs={"dropout": jax.random.key(5)}))
  one, many = apply(inputs), apply(packed_inputs)
  index = np.take_along_axis(packed["example_index"], packed["example_starts"], 1)
  real = packed["example_mask"] > 0
  result = np.zeros_like(np.asarray(one))
  result[index[real]] = np.asarray(many)[real]
  return np.asarray(one), result


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_a_classifier_on_packed_rows_computes_what_it_does_one_example_a_row(pooling):
  model = BertForSequenceClassification(CFG.replace(classifier_pooling=pooling), num_labels=3)
  one, many = _unpacked_and_packed(model, examples())
  np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5)
  assert not np.allclose(one, 0)


def test_each_pair_of_a_packed_row_pools_and_predicts_next_sentence_as_alone_in_a_row():
  """BertForPreTraining's pooled output and NSP logits of every pair in a
  packed row are those of the same pair in a row of its own, dropout
  included: NSP reads each pair's own [CLS]."""
  arrays = examples()
  model = BertForPreTraining(CFG)
  inputs = {k: jnp.asarray(arrays[k]) for k in packing.SEQUENCE_FIELDS}
  two_slots = np.zeros((len(arrays["input_ids"]), 2), np.int32)  # MLM slots, unused here
  params = nn.unbox(jax.jit(lambda: model.init(jax.random.key(0), **inputs,
                                               masked_positions=two_slots))())["params"]
  packed = packing.pack(arrays, arrays["input_mask"].shape[1])
  packed_inputs = {k: jnp.asarray(packed[k]) for k in
                   (*packing.SEQUENCE_FIELDS, "positions", "example_index", "example_starts")}

  @jax.jit
  def outputs(inputs):
    slots = jnp.zeros((inputs["input_ids"].shape[0], 2), jnp.int32)
    out = model.apply({"params": params}, **inputs, masked_positions=slots,
                      deterministic=False, rngs={"dropout": jax.random.key(5)})
    return out["pooled_output"], out["nsp_logits"]

  alone, together = outputs(inputs), outputs(packed_inputs)
  index = np.take_along_axis(packed["example_index"], packed["example_starts"], 1)
  real = packed["example_mask"] > 0
  assert real.sum() == len(arrays["input_ids"]) and (real.sum(1) > 1).any()
  for one, many in zip(alone, together, strict=True):
    result = np.zeros_like(np.asarray(one))
    result[index[real]] = np.asarray(many)[real]
    np.testing.assert_allclose(result, one, rtol=1e-5, atol=1e-5)
  assert np.asarray(alone[0]).std(0).mean() > 1e-3  # pairs pool differently


def test_attention_dropout_on_packed_rows_is_that_of_rows_of_one_example():
  model = BertForSequenceClassification(CFG.replace(dropout_rate=0.2,
                                                    attention_dropout_rate=0.3), num_labels=2)
  one, many = _unpacked_and_packed(model, examples(seed=3))
  np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5)


def test_pretraining_heads_pool_each_pair_and_the_probe_means_each_example():
  arrays = examples(n=10)
  model = BertForPreTraining(CFG)
  inputs = {k: jnp.asarray(arrays[k]) for k in packing.SEQUENCE_FIELDS}
  positions = jnp.zeros((10, 3), jnp.int32)
  params = nn.unbox(jax.jit(lambda: model.init(jax.random.key(0), **inputs,
                                               masked_positions=positions))())["params"]
  packed = packing.pack(arrays, 24)
  packed_inputs = {k: jnp.asarray(packed[k]) for k in
                   (*packing.SEQUENCE_FIELDS, "positions", "example_index", "example_starts")}
  index = np.take_along_axis(packed["example_index"], packed["example_starts"], 1)
  real = packed["example_mask"] > 0
  apply = jax.jit(lambda inputs, method: model.apply({"params": params}, **inputs,
                                                    method=method), static_argnums=1)
  one = apply({**inputs, "masked_positions": positions}, None)
  many = apply({**packed_inputs, "masked_positions": jnp.zeros((len(packed["input_ids"]), 3),
                                                               jnp.int32)}, None)
  np.testing.assert_allclose(np.asarray(many["nsp_logits"])[real],
                             np.asarray(one["nsp_logits"])[index[real]], rtol=1e-5, atol=1e-5)
  means = [apply(x, "mean_pooled") for x in (inputs, packed_inputs)]
  np.testing.assert_allclose(np.asarray(means[1])[real], np.asarray(means[0])[index[real]],
                             rtol=1e-5, atol=1e-5)
