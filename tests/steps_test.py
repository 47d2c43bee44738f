"""The generic step with the MLM + NSP objective: losses fall, accumulation
is exact, shardings hold."""

import jax
import pytest
import numpy as np
from helpers import train_config

from lmjax import parallel
from lmjax.model import BertConfig, BertForPreTraining
from lmjax.train import mlm_nsp, optimizer, steps

CFG = BertConfig.named("tiny", vocab_size=64, max_position=32, num_layers=2)


def _batch(b=8, length=16, p=3, seed=0):
  rng = np.random.default_rng(seed)
  return dict(input_ids=rng.integers(5, 64, (b, length)).astype(np.int32),
              segment_ids=np.zeros((b, length), np.int32),
              input_mask=np.ones((b, length), np.int32),
              masked_positions=rng.integers(1, length, (b, p)).astype(np.int32),
              masked_ids=rng.integers(5, 64, (b, p)).astype(np.int32),
              masked_weights=np.ones((b, p), np.float32),
              nsp_labels=rng.integers(0, 2, b).astype(np.int32))


def _setup(mesh, accum=1, cfg=CFG, weights=None, **train):
  train = train_config(grad_accum_steps=accum, **train)
  model = BertForPreTraining(cfg)
  tx = optimizer.create_optimizer(train)
  state, shardings = steps.create_train_state(mlm_nsp.init_params(model, _batch()), tx,
                                              mesh, jax.random.key(0))
  step = steps.jit_train_step(
      mlm_nsp.make_train_step(model, tx, weights or mlm_nsp.LossWeights(), accum_steps=accum,
                              schedule=optimizer.learning_rate_schedule(train)),
      shardings, mesh)
  return model, state, shardings, step


def test_training_on_one_batch_drives_the_loss_down():
  mesh = parallel.make_mesh()
  model, state, shardings, step = _setup(mesh, warmup_steps=2)
  batch = parallel.shard_batch(_batch(), mesh)
  losses = []
  for _ in range(25):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]
  assert set(metrics) == {"loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy",
                          "grad_norm", "learning_rate", "real_tokens", "real_token_fraction"}
  assert metrics["real_tokens"] == batch["input_mask"].sum()
  assert int(state.step) == 25
  eval_step = steps.jit_eval_step(mlm_nsp.make_eval_step(model), shardings.params, mesh)
  sums = eval_step(state.params, batch)
  assert float(sums["mlm_count"]) == 24 and float(sums["nsp_count"]) == 8
  assert float(sums["mlm_correct"]) / 24 > 0.5


@pytest.mark.slow
def test_accumulated_gradients_equal_one_big_batch_whatever_the_masked_counts():
  """Without dropout, k micro-batches give the full batch's loss, metrics
  and update: each term (MLM, NSP and CP) is normalized by the full batch's
  count, and CP's negatives are the full batch's. Micro-batch i takes rows
  i, i+4: here 0, 2, 4 and 6 real predictions."""
  cp = 0.5
  cfg = CFG.replace(dropout_rate=0.0, attention_dropout_rate=0.0)
  mesh = parallel.make_mesh()
  host = _batch()
  host["masked_weights"] = (np.arange(3)[None] < (np.arange(8) % 4)[:, None]).astype(
      np.float32)
  host["segment_ids"] = (np.arange(16)[None] >= np.arange(4, 12)[:, None]).astype(np.int32)
  assert [host["masked_weights"][i::4].sum() for i in range(4)] == [0, 2, 4, 6]
  batch = parallel.shard_batch(host, mesh)
  weights = mlm_nsp.LossWeights(cp=cp, cp_temperature=0.1)
  _, s1, _, step1 = _setup(mesh, accum=1, cfg=cfg, weights=weights)
  _, s4, _, step4 = _setup(mesh, accum=4, cfg=cfg, weights=weights)
  s1, m1 = step1(s1, batch, jax.random.key(1))
  s4, m4 = step4(s4, batch, jax.random.key(1))
  keys = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy")
  for key in keys + (("cp_loss", "cp_accuracy") if cp else ()):
    np.testing.assert_allclose(m4[key], m1[key], rtol=1e-5, err_msg=key)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               s4.params, s1.params)


@pytest.mark.slow
def test_accumulated_classification_equals_one_big_batch():
  from lmjax.model import BertForSequenceClassification  # pylint: disable=import-outside-toplevel
  from lmjax.train import classification  # pylint: disable=import-outside-toplevel
  cfg = CFG.replace(dropout_rate=0.0, attention_dropout_rate=0.0)
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(2)
  host = dict(input_ids=rng.integers(5, 64, (8, 16)).astype(np.int32),
              segment_ids=np.zeros((8, 16), np.int32),
              input_mask=(np.arange(16)[None] < rng.integers(3, 17, (8, 1))).astype(np.int32),
              labels=rng.integers(0, 3, 8).astype(np.int32))
  model = BertForSequenceClassification(cfg, num_labels=3)
  results = []
  for accum in (1, 4):
    train = train_config(grad_accum_steps=accum)
    tx = optimizer.create_optimizer(train)
    state, shardings = steps.create_train_state(
        classification.init_params(model, host), tx, mesh, jax.random.key(0))
    step = steps.jit_train_step(classification.make_train_step(model, tx, accum), shardings,
                                mesh)
    results.append(step(state, parallel.shard_batch(host, mesh), jax.random.key(1)))
  (s1, m1), (s4, m4) = results
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m4["accuracy"], m1["accuracy"], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               s4.params, s1.params)


@pytest.mark.slow
def test_state_is_sharded_and_steps_match_on_a_mesh():
  single = parallel.make_mesh(devices=jax.devices()[:1])
  _, s1, _, step1 = _setup(single)
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  _, s8, shardings, step8 = _setup(mesh)
  mu = s8.opt_state[1][0].mu["bert"]["embeddings"]["word_embeddings"]["embedding"]
  assert mu.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  for _ in range(3):
    s1, m1 = step1(s1, parallel.shard_batch(_batch(), single), jax.random.key(2))
    s8, m8 = step8(s8, parallel.shard_batch(_batch(), mesh), jax.random.key(2))
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)


def test_lowering_ahead_of_time_keeps_the_models_sharding_constraints():
  # The run scaffold compiles the step with .lower(...).compile() to read its
  # memory analysis; the logical constraints must be in that program too.
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  _, state, _, step = _setup(mesh)
  lowered = step.lower(state, parallel.shard_batch(_batch(), mesh), jax.random.key(1))
  text = lowered.as_text()
  assert text.count("sharding_constraint") >= 10, "logical constraints were dropped"
  compiled = lowered.compile()
  assert compiled.memory_analysis().temp_size_in_bytes > 0
