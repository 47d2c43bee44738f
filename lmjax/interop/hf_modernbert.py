"""Hugging Face ModernBERT <-> lmjax: its config.json fields and its tensors,
for ModernBertModel, ModernBertForMaskedLM and
ModernBertForSequenceClassification (transformers' names)."""

from typing import Any

import numpy as np

from lmjax.errors import ConfigError
from lmjax.interop.hf import HfTensor, label_fields
from lmjax.model.modernbert import ModernBertConfig

# config.json field -> ModernBertConfig field
_FIELDS = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size", "max_position_embeddings": "max_position",
    "local_attention": "local_window", "norm_eps": "norm_eps",
    "initializer_range": "initializer_range", "initializer_cutoff_factor": "initializer_cutoff",
    "classifier_pooling": "classifier_pooling", "decoder_bias": "decoder_bias",
    "embedding_dropout": "embedding_dropout_rate", "attention_dropout": "attention_dropout_rate",
    "mlp_dropout": "mlp_dropout_rate", "classifier_dropout": "classifier_dropout_rate",
}
_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "relu": "relu", "silu": "silu"}
# Biases ModernBERT can have that lmjax's has not: each must be false.
_NO_BIASES = ("norm_bias", "attention_bias", "mlp_bias", "classifier_bias")


def _global_every(hf: dict[str, Any]) -> int:
  """The period of global layers, from `layer_types` or the older
  `global_attn_every_n_layers`; ConfigError for another pattern."""
  layers = hf.get("num_hidden_layers", 22)
  kinds = hf.get("layer_types")
  if kinds is None:
    return int(hf.get("global_attn_every_n_layers", 3))
  period = next((i for i, k in enumerate(kinds) if i and k == "full_attention"), len(kinds))
  expected = ["sliding_attention" if i % period else "full_attention" for i in range(layers)]
  if kinds != expected:
    raise ConfigError("layer_types is not global every N layers from the first "
                      f"({kinds[:6]}...); lmjax's ModernBERT cannot express it")
  return period


def _rope_theta(hf: dict[str, Any], kind: str, old_name: str, default: float) -> float:
  params = (hf.get("rope_parameters") or {}).get(kind) or {}
  if params.get("rope_type", "default") != "default":
    raise ConfigError(f"rope_parameters.{kind}.rope_type {params['rope_type']!r} is not "
                      "supported (only 'default')")
  return float(params.get("rope_theta", hf.get(old_name, default)))


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModernBertConfig:
  """The ModernBertConfig of a Hugging Face ModernBERT config.json dict."""
  if hf.get("model_type", "modernbert") != "modernbert":
    raise ConfigError(f"model_type is {hf['model_type']!r}, not 'modernbert'")
  for name in _NO_BIASES:
    if hf.get(name):
      raise ConfigError(f"{name} is true; lmjax's ModernBERT has no such biases")
  acts = {}
  for theirs, ours in (("hidden_activation", "hidden_act"),
                       ("classifier_activation", "head_act")):
    act = hf.get(theirs, "gelu")
    if act not in _ACTIVATIONS:
      raise ConfigError(f"{theirs} {act!r} is not supported (one of "
                        f"{', '.join(_ACTIVATIONS)})")
    acts[ours] = _ACTIVATIONS[act]
  fields = {ours: hf[theirs] for theirs, ours in _FIELDS.items() if theirs in hf}
  return ModernBertConfig(**{
      **fields, **acts, "global_every": _global_every(hf),
      "global_rope_theta": _rope_theta(hf, "full_attention", "global_rope_theta", 160_000.0),
      "local_rope_theta": _rope_theta(hf, "sliding_attention", "local_rope_theta", 10_000.0),
      **overrides})


def config_to_hf(cfg: ModernBertConfig, heads: bool = True,
                 labels: list[str] | None = None) -> dict[str, Any]:
  """The config.json dict of a ModernBertForMaskedLM (`heads`), a
  ModernBertForSequenceClassification (`labels`) or a ModernBertModel."""
  hf = {theirs: getattr(cfg, ours) for theirs, ours in _FIELDS.items()}
  back = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}
  architecture = ("ModernBertForSequenceClassification" if labels else
                  "ModernBertForMaskedLM" if heads else "ModernBertModel")
  kinds = ["full_attention" if cfg.is_global(i) else "sliding_attention"
           for i in range(cfg.num_layers)]
  return {"architectures": [architecture], "model_type": "modernbert", **hf,
          "hidden_activation": back[cfg.hidden_act],
          "classifier_activation": back[cfg.head_act], "layer_types": kinds,
          "rope_parameters": {
              "full_attention": {"rope_type": "default", "rope_theta": cfg.global_rope_theta},
              "sliding_attention": {"rope_type": "default",
                                    "rope_theta": cfg.local_rope_theta}},
          **dict.fromkeys(_NO_BIASES, False), "tie_word_embeddings": True,
          "dtype": "float32", **label_fields(labels)}


def tensor_map(cfg: ModernBertConfig, heads: bool, num_labels: int = 0) -> list[HfTensor]:
  """Every tensor of a (loop-layout) ModernBertForMaskedLM (`heads`), a
  ModernBertForSequenceClassification (`num_labels`) or a ModernBertModel,
  transformers' name first. The first layer has no attention norm there."""
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  n, h = cfg.num_heads, cfg.head_dim
  out: list[HfTensor] = []
  base = "model." if heads or num_labels else ""
  root = ("model",) if heads or num_labels else ()

  def linear(hf, path, d_in, d_out, shape=None):
    out.append(HfTensor(f"{hf}.weight", path, (d_out, d_in), shape or (d_in, d_out), True))

  def norm(hf, path):
    out.append(HfTensor(f"{hf}.weight", (*path, "scale"), (d,), (d,), False))

  out.append(HfTensor(f"{base}embeddings.tok_embeddings.weight",
                      (*root, "embeddings", "embedding"), (v, d), (v, d), False))
  norm(f"{base}embeddings.norm", (*root, "embedding_norm"))
  for i in range(cfg.num_layers):
    hf, path = f"{base}layers.{i}", (*root, "encoder", f"layers_{i}")
    if i:
      norm(f"{hf}.attn_norm", (*path, "attention_norm"))
    linear(f"{hf}.attn.Wqkv", (*path, "attention", "qkv"), d, 3 * d, (d, 3, n, h))
    linear(f"{hf}.attn.Wo", (*path, "attention", "out"), d, d, (n, h, d))
    norm(f"{hf}.mlp_norm", (*path, "mlp_norm"))
    linear(f"{hf}.mlp.Wi", (*path, "mlp", "wi"), d, 2 * f, (d, 2, f))
    linear(f"{hf}.mlp.Wo", (*path, "mlp", "wo"), f, d)
  norm(f"{base}final_norm", (*root, "final_norm"))
  if heads or num_labels:
    linear("head.dense", ("head", "dense"), d, d)
    norm("head.norm", ("head", "norm"))
  if heads and cfg.decoder_bias:
    out.append(HfTensor("decoder.bias", ("output_bias",), (v,), (v,), False))
  if num_labels:
    linear("classifier", ("classifier", "kernel"), d, num_labels)
    out.append(HfTensor("classifier.bias", ("classifier", "bias"), (num_labels,),
                        (num_labels,), False))
  return out


def params_from_hf(state: dict[str, np.ndarray], cfg: ModernBertConfig, heads: bool,
                   num_labels: int = 0) -> dict:
  """lmjax's (loop-layout) parameters of a transformers state dict; the
  first layer's unused attention norm is ones."""
  params: dict = {}

  def put(path, value):
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value

  for tensor in tensor_map(cfg, heads, num_labels):
    put(tensor.path, tensor.from_hf(np.asarray(state[tensor.hf_name])))
  root = ("model",) if heads or num_labels else ()
  put((*root, "encoder", "layers_0", "attention_norm", "scale"),
      np.ones(cfg.hidden_size, np.float32))
  return params
