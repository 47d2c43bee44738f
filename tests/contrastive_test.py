"""Contrastive prediction: segments cut from pairs, InfoNCE against a numpy
reference, negatives from the whole sharded batch, and a step that learns it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import train_config

from lmjax import parallel
from lmjax.model import BertConfig, BertForPreTraining
from lmjax.train import contrastive, mlm_nsp, optimizer, steps

CLS, SEP, MASK = 2, 3, 4


def _pair_batch():
  # [CLS] 10 11 12 [SEP] 20 21 [SEP] pad pad, and [CLS] 30 [SEP] 40 41 42 43 [SEP] pad pad,
  # with 11 and 41 masked ([MASK] in the input, the original in masked_ids).
  ids = np.array([[CLS, 10, MASK, 12, SEP, 20, 21, SEP, 0, 0],
                  [CLS, 30, SEP, 40, MASK, 42, 43, SEP, 0, 0]], np.int32)
  segments = np.array([[0, 0, 0, 0, 0, 1, 1, 1, 0, 0],
                       [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]], np.int32)
  return dict(input_ids=ids, segment_ids=segments,
              input_mask=(np.arange(10)[None] < 8).astype(np.int32).repeat(2, 0),
              masked_positions=np.array([[2, 0], [4, 0]], np.int32),
              masked_ids=np.array([[11, 0], [41, 0]], np.int32),
              masked_weights=np.array([[1, 0], [1, 0]], np.float32),
              nsp_labels=np.array([0, 1], np.int32))


def test_segments_are_cut_from_the_pair_with_their_tokens_restored():
  a, b = contrastive.segments(jax.tree.map(jnp.asarray, _pair_batch()))
  a_tokens = [list(np.asarray(a["input_ids"][i])[np.asarray(a["input_mask"][i]) > 0])
              for i in range(2)]
  b_tokens = [list(np.asarray(b["input_ids"][i])[np.asarray(b["input_mask"][i]) > 0])
              for i in range(2)]
  assert a_tokens == [[CLS, 10, 11, 12, SEP], [CLS, 30, SEP]]
  assert b_tokens == [[CLS, 20, 21, SEP], [CLS, 40, 41, 42, 43, SEP]]
  for part in (a, b):  # real tokens first, then padding; one segment
    mask = np.asarray(part["input_mask"])
    assert (np.diff(mask, axis=1) <= 0).all() and not np.asarray(part["segment_ids"]).any()


def _reference_info_nce(a, b, positive, temperature):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  logits = a @ b.T / temperature
  rows = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  cols = logits - np.log(np.exp(logits).sum(0, keepdims=True))
  per_row = -(np.diag(rows) + np.diag(cols)) / 2
  return (per_row * positive).sum() / positive.sum(), ((logits.argmax(1) == np.arange(
      len(a))) * positive).sum()


def test_info_nce_equals_a_reference_and_counts_only_actual_next_pairs():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 16, 8)).astype(np.float32)
  b[:8] = a[:8] + 0.1 * b[:8]  # the first half finds its partner
  positive = (np.arange(16) % 3 != 0).astype(np.float32)
  out = contrastive.info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(positive), 0.1)
  loss, correct = _reference_info_nce(a.astype(np.float64), b.astype(np.float64), positive,
                                      0.1)
  assert float(out["cp_loss"]) == pytest.approx(loss, rel=1e-5)
  assert float(out["cp_correct"]) == correct and float(out["cp_count"]) == positive.sum()
  assert correct >= 5  # of the 5 positives among rows 0..7


def test_negatives_come_from_every_device_of_the_mesh():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 16, 8)).astype(np.float32)
  positive = np.ones(16, np.float32)
  mesh = parallel.make_mesh()  # 8 devices: two rows each
  sharded = jax.jit(lambda a, b, p: contrastive.info_nce(a, b, p, 0.05),
                    in_shardings=parallel.batch_sharding(mesh),
                    out_shardings=parallel.replicated(mesh))
  whole = contrastive.info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(positive), 0.05)
  got = sharded(*(jax.device_put(x, parallel.batch_sharding(mesh)) for x in (a, b, positive)))
  assert float(got["cp_loss"]) == pytest.approx(float(whole["cp_loss"]), rel=1e-5)
  # A batch of 2 (one device's share) would be an easier task: a lower loss.
  local = contrastive.info_nce(jnp.asarray(a[:2]), jnp.asarray(b[:2]),
                               jnp.asarray(positive[:2]), 0.05)
  assert float(local["cp_loss"]) < float(whole["cp_loss"])


def _batch(b=16, length=16, p=2, seed=0):
  """Pairs whose A and B draw on the same few words of their own (a topic),
  as a document's consecutive segments share theirs."""
  rng = np.random.default_rng(seed)
  a_len = rng.integers(3, 8, b)
  topics = np.stack([rng.choice(np.arange(5, 64), 4, replace=False) for _ in range(b)])
  ids = np.take_along_axis(topics, rng.integers(0, 4, (b, length)), 1).astype(np.int32)
  ids[:, 0] = CLS
  ids[np.arange(b), a_len - 1] = SEP
  ids[:, length - 1] = SEP
  return dict(input_ids=ids,
              segment_ids=(np.arange(length)[None] >= a_len[:, None]).astype(np.int32),
              input_mask=np.ones((b, length), np.int32),
              masked_positions=np.tile([1, length - 2], (b, 1)).astype(np.int32),
              masked_ids=ids[:, [1, length - 2]],
              masked_weights=np.ones((b, p), np.float32),
              nsp_labels=(np.arange(b) % 4 == 3).astype(np.int32))


@pytest.mark.slow
@pytest.mark.parametrize("accum", [1, 2])
def test_a_step_with_cp_learns_to_match_the_segments(accum):
  cfg = BertConfig.named("tiny", vocab_size=64, max_position=32, num_layers=2)
  train = train_config(grad_accum_steps=accum, warmup_steps=2, learning_rate=3e-3)
  model, tx = BertForPreTraining(cfg), optimizer.create_optimizer(train)
  weights = mlm_nsp.LossWeights(mlm=1.0, nsp=0.0, cp=1.0, cp_temperature=0.1)
  mesh = parallel.make_mesh()
  state, shardings = steps.create_train_state(mlm_nsp.init_params(model, _batch()), tx, mesh,
                                              jax.random.key(0))
  step = steps.jit_train_step(mlm_nsp.make_train_step(model, tx, weights, accum), shardings,
                              mesh)
  batch = parallel.shard_batch(_batch(), mesh)
  history = []
  for _ in range(30):
    state, metrics = step(state, batch, jax.random.key(1))
    history.append({k: float(v) for k, v in metrics.items()})
  assert {"cp_loss", "cp_accuracy"} <= set(history[0])
  assert history[-1]["cp_loss"] < 0.5 * history[0]["cp_loss"]
  eval_step = steps.jit_eval_step(mlm_nsp.make_eval_step(model, weights), shardings.params,
                                  mesh)
  scores = mlm_nsp.evaluate(eval_step, state.params, [batch])
  assert scores["eval_cp_accuracy"] > 0.8  # 12 actual-next pairs find their B among 16
  assert mlm_nsp.evaluate(steps.jit_eval_step(mlm_nsp.make_eval_step(model),
                                              shardings.params, mesh),
                          state.params, [batch]).keys() == {
      "eval_mlm_loss", "eval_nsp_loss", "eval_loss", "eval_mlm_accuracy", "eval_nsp_accuracy"}


def test_in_training_a_random_next_pair_has_its_own_a_as_positive():
  batch = {k: jnp.asarray(v) for k, v in _pair_batch().items()}
  seen = {}

  def pooled(inputs, stream):
    seen[stream] = {k: np.asarray(v) for k, v in inputs.items()}
    return jnp.asarray(inputs["input_ids"][:, :4], jnp.float32) + stream * 0.01

  out = contrastive.losses(pooled, batch, 0.1, dropout_views=True)
  a, b = contrastive.segments(batch)
  own = np.asarray(batch["nsp_labels"]) == 1
  assert own.any() and (~own).any()
  for key in a:
    np.testing.assert_array_equal(seen[1][key][own], np.asarray(a[key])[own])
    np.testing.assert_array_equal(seen[1][key][~own], np.asarray(b[key])[~own])
  assert float(out["cp_count"]) == len(own)  # every row is a positive
  evaluation = contrastive.losses(pooled, batch, 0.1)
  assert float(evaluation["cp_count"]) == (~own).sum()
