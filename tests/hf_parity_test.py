"""lmjax BERT against the reference: transformers' BertForPreTraining (torch, fp32)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmjax.errors import CheckpointError  # noqa: E402 (after the importorskips)
from lmjax.interop import tensor_files  # noqa: E402 (after the importorskips)
from lmjax.interop.hf import load_hf_bert, save_hf_bert  # noqa: E402 (after the importorskips)
from lmjax.model import BertConfig, BertForPreTraining, param_count  # noqa: E402 (after the importorskips)
from lmjax.model.internals import apply_with_internals  # noqa: E402 (after the importorskips)

TOL = 1e-5

CONFIGS = {
    "small": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64),
    "odd": dict(vocab_size=131, hidden_size=48, num_hidden_layers=3,
                num_attention_heads=3, intermediate_size=100,
                max_position_embeddings=40, type_vocab_size=3,
                layer_norm_eps=1e-7),
    "tanh_gelu_one_segment": dict(vocab_size=64, hidden_size=40, num_hidden_layers=1,
                                  num_attention_heads=5, intermediate_size=64,
                                  max_position_embeddings=24, type_vocab_size=1,
                                  hidden_act="gelu_new"),
}


def _reference(name, seed=0):
  """A transformers BertForPreTraining with random weights, LayerNorms and biases."""
  torch.manual_seed(seed)
  model = transformers.BertForPreTraining(transformers.BertConfig(**CONFIGS[name]))
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  return model.eval()


def _inputs(hf_config, batch=4, length=19, preds=6, seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array([length, 1, length // 2, 3])[:batch]
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
  return dict(
      input_ids=rng.integers(0, hf_config.vocab_size, (batch, length)),
      segment_ids=rng.integers(0, hf_config.type_vocab_size, (batch, length)) * mask,
      input_mask=mask,
      masked_positions=rng.integers(0, length, (batch, preds)))


def _reference_outputs(model, x):
  kwargs = dict(input_ids=torch.tensor(x["input_ids"]),
                token_type_ids=torch.tensor(x["segment_ids"]),
                attention_mask=torch.tensor(x["input_mask"]))
  with torch.no_grad():
    out = model(**kwargs)
    encoded = model.bert(**kwargs)
  return dict(
      sequence_output=encoded.last_hidden_state.numpy(),
      pooled_output=encoded.pooler_output.numpy(),
      mlm_logits=np.take_along_axis(out.prediction_logits.numpy(),
                                    x["masked_positions"][..., None], axis=1),
      nsp_logits=out.seq_relationship_logits.numpy())


def _lmjax_outputs(config, params, x):
  x = {k: jnp.asarray(v, jnp.int32) for k, v in x.items()}
  out = BertForPreTraining(config).apply({"params": params}, **x)
  return {k: np.asarray(v) for k, v in out.items()}


def _assert_close(ours, reference):
  for key, want in reference.items():
    err = np.abs(ours[key] - want).max()
    assert err <= TOL, f"{key}: max abs difference {err:.2e}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("scan", [False, True])
def test_hf_checkpoint_loads_and_matches_reference(name, scan, tmp_path):
  model = _reference(name)
  model.save_pretrained(tmp_path)
  config, params = load_hf_bert(tmp_path, scan_layers=scan)
  assert config.scan_layers == scan
  x = _inputs(model.config)
  _assert_close(_lmjax_outputs(config, params, x), _reference_outputs(model, x))


@pytest.mark.parametrize("scan", [False, True])
def test_internals_are_transformers_attentions_and_hidden_states(scan, tmp_path):
  """Every layer's attention probabilities and hidden states, as transformers'
  output_attentions and output_hidden_states give them (real queries only:
  padding's rows are no one's), and the outputs unchanged by asking."""
  model = _reference("odd")
  model.config._attn_implementation = "eager"  # pylint: disable=protected-access
  model.save_pretrained(tmp_path)
  config, params = load_hf_bert(tmp_path, scan_layers=scan)
  x = _inputs(model.config)
  with torch.no_grad():
    want = model.bert(input_ids=torch.tensor(x["input_ids"]),
                      token_type_ids=torch.tensor(x["segment_ids"]),
                      attention_mask=torch.tensor(x["input_mask"]),
                      output_attentions=True, output_hidden_states=True)
  inputs = {k: jnp.asarray(v, jnp.int32) for k, v in x.items()}
  outputs, internals = apply_with_internals(BertForPreTraining(config), {"params": params},
                                            **inputs)
  real = x["input_mask"].astype(bool)
  hidden = np.asarray(internals.hidden_states)
  assert hidden.shape == (4, *x["input_ids"].shape, 48)
  for i, layer in enumerate(want.hidden_states):
    assert np.abs(hidden[i][real] - layer.numpy()[real]).max() <= TOL, i
  probs = np.asarray(internals.attention_probs)
  assert probs.shape == (3, 4, 3, 19, 19)
  for i, layer in enumerate(want.attentions):
    err = np.abs(probs[i].transpose(0, 2, 1, 3)[real] - layer.numpy().transpose(0, 2, 1, 3)[real])
    assert err.max() <= TOL, i
  np.testing.assert_allclose(probs.sum(-1).transpose(0, 1, 3, 2)[:, real], 1.0, atol=1e-5)
  plain = _lmjax_outputs(config, params, x)  # the fused attention: rounded differently
  for key, value in outputs.items():
    assert np.abs(np.asarray(value) - plain[key]).max() <= TOL, key


def test_internals_are_sown_only_on_request():
  """init and a plain apply neither keep nor return the internals: the
  program's outputs are the model's four, with no [B, N, L, L] among them."""
  model = BertForPreTraining(BertConfig.named("tiny", vocab_size=64))
  ids = jnp.ones((2, 16), jnp.int32)
  variables = model.init(jax.random.key(0), ids, ids, ids, ids[:, :2])
  assert set(variables) == {"params"}
  plain = jax.make_jaxpr(lambda v: model.apply(v, ids, ids, ids, ids[:, :2]))(variables)
  asked = jax.make_jaxpr(lambda v: apply_with_internals(model, v, ids, ids, ids,
                                                        ids[:, :2]))(variables)
  shapes = lambda jaxpr: sorted(tuple(v.aval.shape) for v in jaxpr.jaxpr.outvars)
  assert shapes(plain) == [(2, 2), (2, 2, 64), (2, 16, 128), (2, 128)]
  assert shapes(asked) == sorted(shapes(plain) + [(2, 2, 2, 16, 16), (3, 2, 16, 128)])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_counts_equal_transformers(name):
  model = _reference(name)
  config, params = _load_via_disk(model)
  ours = sum(x.size for x in jax.tree_util.tree_leaves(params))
  assert ours == param_count(config) == model.num_parameters()
  assert param_count(config, "encoder") == model.bert.num_parameters()


def _load_via_disk(model, **overrides):
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    return load_hf_bert(tmp, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True])
def test_lmjax_weights_load_into_transformers(scan, tmp_path):
  model = _reference("odd")
  config, _ = _load_via_disk(model, scan_layers=scan)
  x = _inputs(model.config)
  variables = BertForPreTraining(config).init(
      jax.random.key(3), **{k: jnp.asarray(v) for k, v in x.items()})
  params = jax.tree_util.tree_map(  # perturb zeros and ones too
      lambda p: p + 0.05 * jax.random.normal(jax.random.key(4), p.shape),
      nn.unbox(variables)["params"])
  save_hf_bert(config, params, tmp_path)
  loaded = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
  _assert_close(_lmjax_outputs(config, params, x), _reference_outputs(loaded, x))


@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_through_hf_is_bit_identical(scan, tmp_path):
  config, params = _load_via_disk(_reference("small"), scan_layers=scan)
  save_hf_bert(config, params, tmp_path)
  config2, params2 = load_hf_bert(tmp_path, scan_layers=scan)
  assert config2 == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
  assert (jax.tree_util.tree_structure(params2) ==
          jax.tree_util.tree_structure(params))


def test_encoder_only_checkpoints(tmp_path):
  reference = _reference("small")
  reference.bert.save_pretrained(tmp_path)  # a BertModel: no 'bert.' prefix
  with pytest.raises(CheckpointError, match="cls.predictions"):
    load_hf_bert(tmp_path)
  config, params = load_hf_bert(tmp_path, heads=False)
  assert set(params) == {"bert"}
  _, full = _load_via_disk(reference)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["bert"], full["bert"])


def test_old_names_bf16_and_torch_bin(tmp_path):
  reference = _reference("small")
  _, want = _load_via_disk(reference)
  state = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in reference.state_dict().items()}
  reference.config.save_pretrained(tmp_path)
  torch.save(state, tmp_path / "pytorch_model.bin")
  _, params = load_hf_bert(tmp_path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)

  (tmp_path / "pytorch_model.bin").unlink()
  bf16 = {k: v.to(torch.bfloat16).contiguous() for k, v in reference.state_dict().items()
          if "decoder" not in k}
  import safetensors.torch  # pylint: disable=import-outside-toplevel
  safetensors.torch.save_file(bf16, tmp_path / "model.safetensors",
                              metadata={"format": "pt"})
  _, params = load_hf_bert(tmp_path)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_array_equal(
          a, np.asarray(b).astype(jnp.bfloat16).astype(np.float32)), params, want)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_in_torch_bin_is_refused(tmp_path, capfd):
  import pickle  # pylint: disable=import-outside-toplevel

  class Payload:
    def __reduce__(self):
      return (print, ("pwned",))

  _reference("small").config.save_pretrained(tmp_path)
  with open(tmp_path / "pytorch_model.bin", "wb") as f:
    pickle.dump({"x": Payload()}, f)
  with pytest.raises(CheckpointError, match="cannot be read safely"):
    load_hf_bert(tmp_path)
  assert "pwned" not in capfd.readouterr().out


def _corrupt(tmp_path, edit):
  _reference("small").save_pretrained(tmp_path)
  tensors = dict(tensor_files.read_safetensors(tmp_path / "model.safetensors"))
  edit(tensors)
  tensor_files.write_safetensors(tmp_path / "model.safetensors", tensors)


def test_missing_tensor_is_named(tmp_path):
  _corrupt(tmp_path, lambda t: t.pop("bert.encoder.layer.1.output.dense.bias"))
  with pytest.raises(CheckpointError,
                     match=r"tensor bert\.encoder\.layer\.1\.output\.dense\.bias is missing"):
    load_hf_bert(tmp_path)


def test_mismatched_tensor_is_named(tmp_path):
  def edit(t):
    t["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((36, 32), np.float32)
  _corrupt(tmp_path, edit)
  with pytest.raises(CheckpointError, match=r"intermediate\.dense\.weight has shape"):
    load_hf_bert(tmp_path)


def test_unexpected_tensor_and_untied_decoder_are_errors(tmp_path):
  _corrupt(tmp_path, lambda t: t.update(
      {"bert.embeddings.distance_embedding.weight": np.zeros((3, 32), np.float32)}))
  with pytest.raises(CheckpointError, match="unexpected tensor"):
    load_hf_bert(tmp_path)
  _corrupt(tmp_path, lambda t: t.update(
      {"cls.predictions.decoder.weight": np.ones((99, 32), np.float32)}))
  with pytest.raises(CheckpointError, match="decoder.weight differs"):
    load_hf_bert(tmp_path)


def test_bad_directories_and_configs(tmp_path):
  with pytest.raises(CheckpointError, match="no config.json"):
    load_hf_bert(tmp_path / "nowhere")
  (tmp_path / "config.json").write_text(json.dumps(CONFIGS["small"]))
  with pytest.raises(CheckpointError, match="no model.safetensors"):
    load_hf_bert(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(
      {**CONFIGS["small"], "position_embedding_type": "relative_key"}))
  with pytest.raises(CheckpointError, match="position_embedding_type"):
    load_hf_bert(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(
      {**CONFIGS["small"], "num_attention_heads": 5}))
  with pytest.raises(CheckpointError, match="num_heads"):
    load_hf_bert(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="config.json"):
    load_hf_bert(tmp_path)


def test_save_leaves_no_partial_files(tmp_path):
  config, params = _load_via_disk(_reference("small"))
  save_hf_bert(config, params, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json",
                                                         "model.safetensors"]


_FLOAT64_CHILD = """
import json, sys, tempfile
import conftest  # 8 CPU devices, as in the parent
import hf_parity_test as H
import jax.numpy as jnp
from lmjax.interop.hf import load_hf_bert
errors = {}
for name in sorted(H.CONFIGS):
  reference = H._reference(name)
  with tempfile.TemporaryDirectory() as tmp:
    reference.save_pretrained(tmp)
    config, params = load_hf_bert(tmp, dtype="float64", param_dtype="float64")
  x = H._inputs(reference.config)
  ours = H._lmjax_outputs(config, params, x)
  want = H._reference_outputs(reference.double(), x)
  errors[name] = {k: float(abs(ours[k] - want[k]).max()) for k in want}
  errors[name]["dtype"] = str(ours["mlm_logits"].dtype)
print(json.dumps(errors))
"""


@pytest.mark.slow
def test_float64_model_matches_the_float64_reference_to_machine_precision():
  # In float32 both implementations round differently (see TOL); in float64
  # any real difference in the computation would stand out above ~1e-15.
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from pathlib import Path  # pylint: disable=import-outside-toplevel
  done = subprocess.run([sys.executable, "-c", _FLOAT64_CHILD], capture_output=True,
                        text=True, check=False, cwd=Path(__file__).parent,
                        env=dict(os.environ, JAX_ENABLE_X64="1"))
  assert done.returncode == 0, done.stderr[-3000:]
  errors = json.loads(done.stdout.strip().splitlines()[-1])
  for name, by_output in errors.items():
    assert by_output.pop("dtype") == "float64"
    for output, err in by_output.items():
      assert err < 1e-12, (name, output, err)
