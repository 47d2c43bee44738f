"""The optax chain: BERT's AdamW, the schedule, the weight-decay mask."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from helpers import train_config

from lmjax.errors import ConfigError
from lmjax.model import BertConfig, BertForPreTraining
from lmjax.train import optimizer


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_warms_up_then_decays(schedule):
  lr = optimizer.learning_rate_schedule(train_config(schedule=schedule,
                                                     end_learning_rate_fraction=0.1))
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(5e-4)
  assert float(lr(10)) == pytest.approx(1e-3)
  assert 1e-4 < float(lr(55)) < 1e-3
  assert float(lr(100)) == pytest.approx(1e-4, rel=1e-3)


def test_one_cycle_rises_from_a_25th_of_the_peak_and_falls_to_the_end():
  lr = optimizer.learning_rate_schedule(train_config(schedule="one_cycle", warmup_steps=30))
  assert float(lr(0)) == pytest.approx(1e-3 / 25)
  assert float(lr(30)) == pytest.approx(1e-3)
  assert float(lr(15)) == pytest.approx((1e-3 + 1e-3 / 25) / 2, rel=1e-3)  # cosine: halfway
  assert float(lr(100)) == pytest.approx(1e-3 / 25 / 1e4, rel=1e-2)
  ended = optimizer.learning_rate_schedule(train_config(schedule="one_cycle", warmup_steps=30,
                                                        end_learning_rate_fraction=0.1))
  assert float(ended(100)) == pytest.approx(1e-4, rel=1e-3)


def test_warmup_stable_decay_holds_the_peak_then_decays_over_its_fraction():
  lr = optimizer.learning_rate_schedule(train_config(schedule="warmup_stable_decay",
                                                     decay_fraction=0.2))
  assert float(lr(5)) == pytest.approx(5e-4)
  assert [float(lr(s)) for s in (10, 50, 80)] == pytest.approx([1e-3] * 3)
  # 1 - sqrt over the last 20 steps: a quarter of the way, half the peak is gone
  assert float(lr(85)) == pytest.approx(1e-3 * (1 - 0.5))
  assert float(lr(100)) == pytest.approx(0.0, abs=1e-9)


def test_a_schedule_without_room_for_its_warm_up_names_where_its_steps_came_from():
  optimizer.check_schedule(train_config(warmup_steps=100))
  with pytest.raises(ConfigError, match=r"warmup_steps=101 does not fit in the 100 steps "
                     r"of the budget; lower warmup_steps, or"):
    optimizer.check_schedule(train_config(warmup_steps=101), "the budget")
  with pytest.raises(ConfigError, match=r"warmup_steps=90 and 20 of decay"):
    optimizer.check_schedule(train_config(warmup_steps=90, schedule="warmup_stable_decay"))


def test_weight_decay_skips_layer_norms_and_biases():
  cfg = BertConfig.named("tiny", vocab_size=50, max_position=16, num_layers=1)
  ids = jnp.zeros((1, 4), jnp.int32)
  for params in (nn.unbox(BertForPreTraining(cfg).init(jax.random.key(0), ids, ids, ids, ids)),
                 BertForPreTraining(cfg).init(jax.random.key(0), ids, ids, ids, ids)):
    mask = jax.tree.leaves_with_path(optimizer.decay_mask(params["params"]))
    by_name = {jax.tree_util.keystr(p): m for p, m in mask}
    decayed = {k for k, m in by_name.items() if m}
    assert any("word_embeddings" in k for k in decayed)
    assert any("['wi']['kernel']" in k for k in decayed)
    assert not any("norm" in k or "bias" in k for k in decayed)
    assert any("layer_norm" in k for k in by_name) and any("output_bias" in k for k in by_name)


def test_adamw_decays_only_masked_parameters():
  tx = optimizer.create_optimizer(train_config(weight_decay=0.5, warmup_steps=0,
                                               grad_clip_norm=0.0))
  params = {"dense": {"kernel": jnp.ones(3), "bias": jnp.ones(3)},
            "mlp_norm": {"scale": jnp.ones(3)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert float(jnp.abs(updates["dense"]["kernel"]).max()) > 0
  assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0
  assert float(jnp.abs(updates["mlp_norm"]["scale"]).max()) == 0


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_gradients_are_clipped_to_the_global_norm_before_the_optimizer(name):
  params = {"w": jnp.ones(4)}
  grads = {"w": jnp.full(4, 1e3)}  # global norm 2,000
  for clip, want in ((1.0, 1.0), (0.0, 2000.0)):
    tx = optimizer.create_optimizer(train_config(optimizer=name, grad_clip_norm=clip))
    _, state = tx.update(grads, tx.init(params), params)
    adam_state = jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu"))
    mu = next(x.mu for x in adam_state if hasattr(x, "mu"))
    # After one step Adam's first moment is (1 - b1) times the gradient it saw.
    assert float(jnp.linalg.norm(mu["w"])) == pytest.approx(0.1 * want, rel=1e-5)


@pytest.mark.parametrize("field,value", [
    ("optimizer", "sgd"), ("schedule", "step"), ("learning_rate", 0.0),
    ("grad_accum_steps", 0), ("batch_size", 0), ("weight_decay", -1.0)])
def test_bad_values_name_the_field(field, value):
  with pytest.raises(ConfigError, match=f"config.train.{field}"):
    optimizer.check_config(train_config(**{field: value}))


def test_the_batch_must_split_into_micro_batches():
  with pytest.raises(ConfigError, match="batch_size must be divisible by grad_accum_steps"):
    optimizer.check_config(train_config(batch_size=8, grad_accum_steps=3))
  optimizer.check_config(train_config(batch_size=8, grad_accum_steps=4))
