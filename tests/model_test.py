"""Model behaviour that needs no reference: layouts, remat, dropout, heads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.model import (
  BertConfig,
  BertForPreTraining,
  BertForSequenceClassification,
  MultiHeadAttention,
)
from lmjax.interop.hf import save_hf_bert
from lmjax.model.encoder import BertModel, stack_layers, unstack_layers
from lmjax.model.layers import Dropout, attention_probs, keep_mask

CFG = BertConfig(vocab_size=97, hidden_size=32, num_layers=3, num_heads=4,
                 intermediate_size=40, max_position=32)


def _batch(cfg=CFG, batch=3, length=16, preds=5, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, length + 1, batch)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  return dict(
      input_ids=jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, length)) * mask),
      segment_ids=jnp.asarray(rng.integers(0, 2, (batch, length)) * mask),
      input_mask=jnp.asarray(mask),
      masked_positions=jnp.asarray(rng.integers(0, 2, (batch, preds))))


def _apply(cfg, params, batch, **kwargs):
  return BertForPreTraining(cfg).apply({"params": params}, **batch, **kwargs)


def _init(cfg, batch):
  return nn.unbox(BertForPreTraining(cfg).init(jax.random.key(0), **batch))["params"]


def test_scan_and_loop_layouts_compute_the_same_function():
  batch = _batch()
  loop_params = _init(CFG, batch)
  scan_cfg = CFG.replace(scan_layers=True)
  scan_params = {**loop_params, "bert": {
      **loop_params["bert"], "encoder": stack_layers(loop_params["bert"]["encoder"])}}
  jax.tree_util.tree_map(  # the stacked tree has exactly scan's structure
      lambda a, b: np.testing.assert_equal(a.shape, b.shape),
      scan_params, _init(scan_cfg, batch))
  loop_out = _apply(CFG, loop_params, batch)
  scan_out = _apply(scan_cfg, scan_params, batch)
  for key in loop_out:
    np.testing.assert_allclose(scan_out[key], loop_out[key], atol=1e-5, rtol=0)
  back = unstack_layers(scan_params["bert"]["encoder"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, back,
                         loop_params["bert"]["encoder"])


@pytest.mark.parametrize("policy,scan", [
    pytest.param("full", True, marks=pytest.mark.slow),
    pytest.param("dots", True, marks=pytest.mark.slow),
    pytest.param("dots_no_batch", True, marks=pytest.mark.slow)])
def test_remat_changes_neither_outputs_nor_gradients(policy, scan):
  batch = _batch()
  base = CFG.replace(scan_layers=scan)
  params = _init(base, batch)

  def loss(params, cfg):
    out = _apply(cfg, params, batch, deterministic=False,
                 rngs={"dropout": jax.random.key(1)})
    return out["mlm_logits"].sum() + out["nsp_logits"].sum()

  grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  value, grads = grad_fn(params, base)
  value_r, grads_r = grad_fn(params, base.replace(remat_policy=policy))
  np.testing.assert_allclose(value_r, value, atol=1e-5)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
      grads_r, grads)


def test_dropout_is_random_only_when_not_deterministic():
  batch = _batch()
  params = _init(CFG, batch)
  eval_a = _apply(CFG, params, batch)
  eval_b = _apply(CFG, params, batch, deterministic=True)
  np.testing.assert_array_equal(eval_a["mlm_logits"], eval_b["mlm_logits"])
  train = [_apply(CFG, params, batch, deterministic=False,
                  rngs={"dropout": jax.random.key(k)})["mlm_logits"] for k in (1, 1, 2)]
  np.testing.assert_array_equal(train[0], train[1])
  assert not np.allclose(train[0], train[2])
  assert not np.allclose(train[0], eval_a["mlm_logits"])


def test_attention_with_dropout_path_matches_fused_attention():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 7, 3, 8)), jnp.float32) for _ in range(3))
  mask = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3], bool)[:, None, None, :]
  probs = attention_probs(q, k, mask)
  ours = jnp.einsum("bnqk,bknh->bqnh", probs, v)
  fused = jax.nn.dot_product_attention(q, k, v, mask=mask)
  np.testing.assert_allclose(ours, fused, atol=1e-6)
  assert float(probs[1, :, :, 4:].max()) == 0.0  # padding gets no weight


def test_padding_does_not_change_real_positions():
  batch = _batch(batch=1, length=16)
  batch["input_mask"] = jnp.asarray([[1] * 10 + [0] * 6])
  params = _init(CFG, batch)
  out = _apply(CFG, params, batch)
  changed = dict(batch, input_ids=batch["input_ids"].at[0, 12].set(5))
  out2 = _apply(CFG, params, changed)
  np.testing.assert_allclose(out2["sequence_output"][0, :10],
                             out["sequence_output"][0, :10], atol=1e-6)
  np.testing.assert_allclose(out2["mlm_logits"], out["mlm_logits"], atol=1e-6)


def test_mlm_head_never_computes_logits_at_every_position():
  batch = _batch(length=16, preds=5)
  params = _init(CFG, batch)
  jaxpr = jax.make_jaxpr(lambda p: _apply(CFG, p, batch))(params)
  shapes = {tuple(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars}
  assert (3, 5, CFG.vocab_size) in shapes
  assert not any(s[:2] == (3, 16) and s[-1] == CFG.vocab_size for s in shapes)


def test_mlm_logits_use_the_tied_word_embeddings():
  batch = _batch()
  params = _init(CFG, batch)
  out = _apply(CFG, params, batch)
  bumped = jax.tree_util.tree_map(lambda x: x, params)
  table = bumped["bert"]["embeddings"]["word_embeddings"]["embedding"]
  bump = jnp.linspace(-1.0, 1.0, CFG.hidden_size) ** 2
  bumped["bert"]["embeddings"]["word_embeddings"]["embedding"] = table.at[7].add(bump)
  # token 7 is absent from the inputs, so only its decoder row changed
  batch = dict(batch, input_ids=jnp.where(batch["input_ids"] == 7, 8, batch["input_ids"]))
  out = _apply(CFG, params, batch)
  out2 = _apply(CFG, bumped, batch)
  diff = np.abs(np.asarray(out2["mlm_logits"] - out["mlm_logits"])).max(axis=(0, 1))
  assert diff[7] > 1e-3 and np.delete(diff, 7).max() == 0.0


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  batch = _batch()
  params = _init(CFG, batch)
  bf16 = CFG.replace(dtype="bfloat16")
  out16 = _apply(bf16, params, batch)
  out32 = _apply(CFG, params, batch)
  assert out16["sequence_output"].dtype == jnp.bfloat16
  assert out16["mlm_logits"].dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(
      _init(bf16, batch)))
  np.testing.assert_allclose(out16["mlm_logits"], out32["mlm_logits"], atol=0.1)


def test_sequence_classifier_and_regressor_shapes():
  batch = _batch()
  del batch["masked_positions"]
  for labels in (3, 1):
    model = BertForSequenceClassification(CFG, num_labels=labels)
    variables = model.init(jax.random.key(0), **batch)
    logits = model.apply(variables, **batch)
    assert logits.shape == (3, labels) and logits.dtype == jnp.float32


def test_a_classifier_pooling_by_the_mean_reads_the_pooler_on_the_mean_of_real_tokens():
  batch = _batch()
  del batch["masked_positions"]
  model = BertForSequenceClassification(CFG.replace(classifier_pooling="mean"), num_labels=2)
  params = nn.unbox(model.init(jax.random.key(0), **batch))["params"]
  seq, _ = BertModel(CFG).apply({"params": params["bert"]}, batch["input_ids"],
                                batch["segment_ids"], batch["input_mask"])
  mask = np.asarray(batch["input_mask"], np.float32)
  mean = (np.asarray(seq) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  pooler, classifier = params["bert"]["pooler"], params["classifier"]
  expected = np.tanh(mean @ np.asarray(pooler["kernel"]) + np.asarray(pooler["bias"]))
  expected = expected @ np.asarray(classifier["kernel"]) + np.asarray(classifier["bias"])
  np.testing.assert_allclose(model.apply({"params": params}, **batch), expected,
                             rtol=1e-5, atol=1e-5)
  cls = BertForSequenceClassification(CFG, num_labels=2).apply({"params": params}, **batch)
  assert not np.allclose(cls, expected, atol=1e-3)


def test_a_classifier_pooling_by_the_mean_is_not_written_as_transformers_bert(tmp_path):
  batch = _batch()
  del batch["masked_positions"]
  cfg = CFG.replace(classifier_pooling="mean")
  params = BertForSequenceClassification(cfg, num_labels=2).init(jax.random.key(0), **batch)
  with pytest.raises(ValueError, match=r"pools at \[CLS\]"):
    save_hf_bert(cfg, params["params"], tmp_path / "out", labels=["neg", "pos"])
  assert not (tmp_path / "out").exists()


def test_too_long_sequence_is_an_error():
  batch = _batch(length=CFG.max_position + 1)
  with pytest.raises(ValueError, match="max_position"):
    BertForPreTraining(CFG).init(jax.random.key(0), **batch)


def test_attention_module_shapes():
  x = jnp.ones((2, 5, CFG.hidden_size))
  module = MultiHeadAttention(CFG)
  variables = nn.unbox(module.init(jax.random.key(0), x, jnp.ones((2, 5)), True))
  assert variables["params"]["query"]["kernel"].shape == (32, 4, 8)
  assert variables["params"]["out"]["kernel"].shape == (4, 8, 32)
  assert module.apply(variables, x, jnp.ones((2, 5)), True).shape == x.shape


def test_dropout_masks_keep_their_rate_and_do_not_depend_on_padding():
  seed = jnp.uint32(7)
  mask = keep_mask(seed, (16, 4, 64, 64), 0.9)
  assert abs(float(mask.mean()) - 0.9) < 0.002
  # The same elements of a shorter (less padded) array have the same masks.
  assert (keep_mask(seed, (16, 4, 40, 40), 0.9) == mask[:, :, :40, :40]).all()
  assert (keep_mask(seed, (8, 4, 64, 64), 0.9) == mask[:8]).all()
  other = keep_mask(jnp.uint32(8), (16, 4, 64, 64), 0.9)
  assert 0.15 < float((other != mask).mean()) < 0.2  # independent: 2 * 0.9 * 0.1
  # Neighbouring positions are not correlated.
  rows = mask.reshape(-1, 64).astype(jnp.float32)
  assert abs(float(jnp.corrcoef(rows[:, :-1].ravel(), rows[:, 1:].ravel())[0, 1])) < 0.01


def test_dropout_scales_what_it_keeps():
  x = jnp.ones((64, 128, 32))
  y = Dropout(0.25).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
  assert set(np.unique(np.asarray(y)).tolist()) == {0.0, float(np.float32(1) / np.float32(0.75))}
  assert abs(float(y.mean()) - 1.0) < 0.01
  assert (Dropout(0.25).apply({}, x, deterministic=True) == x).all()
