"""lmjax ModernBERT against the reference: transformers' ModernBertModel,
ModernBertForMaskedLM and ModernBertForSequenceClassification (torch,
float32), with random weights, on padded and packed batches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmjax.data import packing  # noqa: E402 (after the importorskips)
from lmjax.errors import ConfigError  # noqa: E402
from lmjax.interop import hf_modernbert  # noqa: E402
from lmjax.model.encoder import stack_layers  # noqa: E402
from lmjax.model.internals import apply_with_internals  # noqa: E402
from lmjax.model.modernbert import (ModernBertConfig, ModernBertForMaskedLM,  # noqa: E402
                                    ModernBertForSequenceClassification, ModernBertModel)

TOL = 1e-5

# Several sizes, windows (shorter than the batch, so local layers differ from
# global ones), periods of global layers, activations and both poolings.
CONFIGS = {
    "small": dict(vocab_size=97, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=48, local_attention=8, global_attn_every_n_layers=3),
    "odd": dict(vocab_size=131, hidden_size=48, num_hidden_layers=5, num_attention_heads=3,
                intermediate_size=70, local_attention=6, global_attn_every_n_layers=2,
                classifier_pooling="mean", norm_eps=1e-6, global_rope_theta=1000.0,
                local_rope_theta=500.0),
    "every_layer_global": dict(vocab_size=64, hidden_size=40, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64,
                               local_attention=4, global_attn_every_n_layers=1,
                               hidden_activation="gelu_pytorch_tanh", decoder_bias=False),
}


def _hf_config(name, **extra):
  return transformers.ModernBertConfig(**CONFIGS[name], pad_token_id=0, bos_token_id=1,
                                       eos_token_id=2, cls_token_id=1, sep_token_id=2,
                                       max_position_embeddings=64, **extra)


def _reference(cls, name, attention="eager", seed=0, **extra):
  torch.manual_seed(seed)
  config = _hf_config(name, **extra)
  config._attn_implementation = attention  # pylint: disable=protected-access
  model = cls(config)
  with torch.no_grad():  # every weight off its initial value, norms included
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  return model.eval()


def _inputs(vocab, batch=4, length=21, preds=5, seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array([length, 2, length // 2 + 3, 7])[:batch]
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
  return dict(input_ids=rng.integers(3, vocab, (batch, length)) * mask, input_mask=mask,
              masked_positions=np.stack([rng.integers(0, n, preds) for n in lengths]))


def _ours(hf_model):
  cfg = hf_modernbert.config_from_hf(hf_model.config.to_dict())
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  return cfg, state


def _real(array, mask):
  return array[mask.astype(bool)]


@pytest.mark.parametrize("name,attention", [(name, "eager") for name in CONFIGS]
                         + [("small", "sdpa")])
def test_masked_lm_matches_transformers_on_padded_batches(name, attention):
  model = _reference(transformers.ModernBertForMaskedLM, name, attention)
  cfg, state = _ours(model)
  x = _inputs(cfg.vocab_size)
  kwargs = dict(input_ids=torch.tensor(x["input_ids"]),
                attention_mask=torch.tensor(x["input_mask"]))
  with torch.no_grad():
    out, hidden = model(**kwargs), model.model(**kwargs).last_hidden_state.numpy()
  params = hf_modernbert.params_from_hf(state, cfg, heads=True)
  ours = jax.jit(ModernBertForMaskedLM(cfg).apply)(
      {"params": params}, **{k: jnp.asarray(v, jnp.int32) for k, v in x.items()})
  mask = x["input_mask"]  # padding's outputs are no one's to compare
  err = np.abs(_real(np.asarray(ours["sequence_output"]), mask) - _real(hidden, mask)).max()
  assert err < TOL, err
  want = np.take_along_axis(out.logits.numpy(), x["masked_positions"][..., None], axis=1)
  err = np.abs(np.asarray(ours["mlm_logits"]) - want).max()
  assert err < TOL * max(1, np.abs(want).max()), err


@pytest.mark.parametrize("name", list(CONFIGS))
def test_classification_matches_transformers_with_both_poolings(name):
  model = _reference(transformers.ModernBertForSequenceClassification, name, num_labels=3)
  cfg, state = _ours(model)
  x = _inputs(cfg.vocab_size, seed=1)
  with torch.no_grad():
    want = model(input_ids=torch.tensor(x["input_ids"]),
                 attention_mask=torch.tensor(x["input_mask"])).logits.numpy()
  params = hf_modernbert.params_from_hf(state, cfg, heads=False, num_labels=3)
  got = jax.jit(ModernBertForSequenceClassification(cfg, 3).apply)(
      {"params": params}, jnp.asarray(x["input_ids"], jnp.int32),
      jnp.asarray(x["input_mask"], jnp.int32))
  assert np.abs(np.asarray(got) - want).max() < TOL


def test_scanned_layers_compute_what_the_loop_computes():
  model = _reference(transformers.ModernBertModel, "odd")
  cfg, state = _ours(model)
  params = hf_modernbert.params_from_hf(state, cfg, heads=False)
  x = _inputs(cfg.vocab_size, seed=2)
  args = jnp.asarray(x["input_ids"], jnp.int32), jnp.asarray(x["input_mask"], jnp.int32)
  loop = jax.jit(ModernBertModel(cfg).apply)({"params": params}, *args)
  scanned_params = {**params, "encoder": stack_layers(params["encoder"])}
  scanned = jax.jit(ModernBertModel(dataclasses.replace(
      cfg, scan_layers=True, remat_policy="dots")).apply)({"params": scanned_params}, *args)
  np.testing.assert_allclose(np.asarray(scanned), np.asarray(loop), atol=1e-6)
  with torch.no_grad():
    want = model(input_ids=torch.tensor(x["input_ids"]),
                 attention_mask=torch.tensor(x["input_mask"])).last_hidden_state.numpy()
  assert np.abs(_real(np.asarray(scanned), x["input_mask"])
                - _real(want, x["input_mask"])).max() < TOL


@pytest.mark.parametrize("scan", [False, True])
def test_internals_are_transformers_attentions_and_hidden_states(scan):
  """Each layer's attention probabilities (local layers' zero outside the
  window) and hidden states, as transformers' eager attention gives them,
  on real queries."""
  model = _reference(transformers.ModernBertModel, "small")
  cfg, state = _ours(model)
  params = hf_modernbert.params_from_hf(state, cfg, heads=False)
  if scan:
    cfg = dataclasses.replace(cfg, scan_layers=True)
    params = {**params, "encoder": stack_layers(params["encoder"])}
  x = _inputs(cfg.vocab_size, seed=3)
  with torch.no_grad():
    want = model(input_ids=torch.tensor(x["input_ids"]),
                 attention_mask=torch.tensor(x["input_mask"]),
                 output_attentions=True, output_hidden_states=True)
  _, internals = apply_with_internals(
      ModernBertModel(cfg), {"params": params}, jnp.asarray(x["input_ids"], jnp.int32),
      jnp.asarray(x["input_mask"], jnp.int32))
  real = x["input_mask"].astype(bool)
  hidden, probs = np.asarray(internals.hidden_states), np.asarray(internals.attention_probs)
  assert hidden.shape[0] == len(want.hidden_states) == cfg.num_layers + 1
  for i in range(cfg.num_layers):  # transformers' last is after the final norm
    assert np.abs(hidden[i][real] - want.hidden_states[i].numpy()[real]).max() < TOL, i
  for i, layer in enumerate(want.attentions):
    ours, theirs = probs[i].transpose(0, 2, 1, 3)[real], layer.numpy().transpose(0, 2, 1, 3)[real]
    assert np.abs(ours - theirs).max() < TOL, i
  far = np.abs(np.arange(21)[:, None] - np.arange(21)[None]) > cfg.local_window // 2
  on_real = probs * real[None, :, None, :, None]  # padding's queries see everything
  assert on_real[1][:, :, far].max() == 0 and on_real[0][:, :, far].max() > 0  # local, global


@pytest.mark.parametrize("name", ["small", "odd"])
def test_packed_rows_give_each_example_what_it_gets_alone(name):
  # Windows and global layers stop at example boundaries; positions restart.
  model = _reference(transformers.ModernBertForSequenceClassification, name, num_labels=2)
  cfg, state = _ours(model)
  params = hf_modernbert.params_from_hf(state, cfg, heads=False, num_labels=2)
  x = _inputs(cfg.vocab_size, length=21, seed=3)
  arrays = {k: x[k].astype(np.int32) for k in ("input_ids", "input_mask")}
  arrays["segment_ids"] = np.zeros_like(arrays["input_ids"])
  packed = packing.pack(arrays, 32)
  assert len(packed["input_ids"]) < 4
  apply = jax.jit(ModernBertForSequenceClassification(cfg, 2).apply)
  padded = apply({"params": params}, jnp.asarray(arrays["input_ids"]),
                           jnp.asarray(arrays["input_mask"]))
  rows = apply({"params": params}, **{
      k: jnp.asarray(packed[k]) for k in ("input_ids", "positions", "example_index",
                                          "example_starts")},
                         input_mask=jnp.asarray(packed["input_mask"]))
  slots = packing.slot_examples(packed)
  got = np.zeros_like(np.asarray(padded))
  got[slots[slots >= 0]] = np.asarray(rows)[slots >= 0]
  np.testing.assert_allclose(got, np.asarray(padded), atol=2e-6)


def test_hf_configs_lmjax_cannot_express_are_refused():
  for bad, message in (
      (dict(model_type="bert"), "model_type is 'bert'"),
      (dict(attention_bias=True), "attention_bias is true"),
      (dict(num_hidden_layers=4, layer_types=["full_attention", "full_attention",
                                              "sliding_attention", "full_attention"]),
       "layer_types is not global every N layers"),
      (dict(hidden_activation="mish"), "hidden_activation 'mish' is not supported")):
    with pytest.raises(ConfigError, match=message):
      hf_modernbert.config_from_hf(bad)
  for fields, message in ((dict(local_window=7), "local_window must be even"),
                          (dict(global_every=0), "global_every must be a positive"),
                          (dict(hidden_size=30, num_heads=2), "heads of an even width")):
    with pytest.raises(ConfigError, match=message):
      ModernBertConfig(**fields)


def test_config_round_trips_through_transformers():
  cfg = ModernBertConfig.named("tiny", vocab_size=500, global_every=2, local_window=16,
                               classifier_pooling="mean")
  hf = transformers.ModernBertConfig(**hf_modernbert.config_to_hf(cfg))
  assert hf_modernbert.config_from_hf(hf.to_dict()) == cfg
  assert hf.sliding_window == 8 and hf.layer_types[:3] == [
      "full_attention", "sliding_attention", "full_attention"]
