"""Hugging Face ModernBERT <-> lmjax: its config.json fields and its tensors,
for ModernBertModel, ModernBertForMaskedLM and
ModernBertForSequenceClassification (transformers' names);
`load_hf_modernbert` reads such a directory and `save_hf_modernbert` writes
one."""

import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lmjax.errors import CheckpointError, ConfigError
from lmjax.interop.hf import HfTensor, label_fields, read_checkpoint, read_config, write_directory
from lmjax.model.encoder import stack_layers, unstack_layers
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
                 labels: list[str] | None = None,
                 token_ids: dict[str, int] | None = None) -> dict[str, Any]:
  """The config.json dict of a ModernBertForMaskedLM (`heads`), a
  ModernBertForSequenceClassification (`labels`) or a ModernBertModel;
  `token_ids` (pad, cls, sep: `special_token_ids`) are the tokenizer's,
  which transformers' defaults (its own vocabulary's) are not."""
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
          "dtype": "float32", **(token_ids or {}), **label_fields(labels)}


def special_token_ids(pad: int, cls: int, sep: int) -> dict[str, int]:
  """config.json's token ids of a tokenizer's [PAD], [CLS] and [SEP]
  (ModernBERT's sequences begin with its CLS and end with its SEP)."""
  return dict(pad_token_id=pad, cls_token_id=cls, sep_token_id=sep, bos_token_id=cls,
              eos_token_id=sep)


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
  root = ("model",) if heads or num_labels else ()
  return _place(tensor_map(cfg, heads, num_labels), state, cfg, root)


def _canonical(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A bare ModernBertModel's names under `model.`, as the models with a
  head write them."""
  if "embeddings.tok_embeddings.weight" not in tensors:
    return tensors
  return {(k if k.startswith(("head.", "decoder.", "classifier.")) else f"model.{k}"): v
          for k, v in tensors.items()}


def load_hf_modernbert(path: str | os.PathLike, num_labels: int = 0,
                       **overrides: Any) -> tuple[ModernBertConfig, dict]:
  """Reads a Hugging Face ModernBERT directory (config.json and weights).

  Returns (config, params): the encoder {'model'}, with the head {'head'}
  and the MLM decoder's {'output_bias'} where the checkpoint has them
  (a ModernBertForMaskedLM; a classifier's head is the same module), and a
  classifier {'classifier'} when it has one of `num_labels` outputs.
  `overrides` set the fields the checkpoint does not fix (dropout, dtype,
  layout). CheckpointError names the first missing or misshapen tensor.
  """
  path = Path(path)
  try:
    cfg = config_from_hf(read_config(path), **overrides)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{path / 'config.json'}: {e}") from None
  tensors = _canonical(read_checkpoint(path))
  classifier = tensors.get("classifier.bias")
  if classifier is None or classifier.shape != (num_labels,):
    num_labels = 0  # none, or another task's: the fine-tuning run draws its own
  # The encoder always; the head where there is one (a masked LM's or a
  # classifier's); the decoder's bias of a masked LM (no classifier).
  has_head = "head.dense.weight" in tensors
  masked_lm = has_head and "classifier.weight" not in tensors
  expected = [t for t in tensor_map(cfg, True, num_labels)
              if t.path[0] in ("model", "classifier") or (t.path[0] == "head" and has_head)
              or (t.path[0] == "output_bias" and masked_lm)]
  state = {}
  for t in expected:
    if t.hf_name not in tensors:
      raise CheckpointError(f"{path}: tensor {t.hf_name} is missing")
    if tuple(tensors[t.hf_name].shape) != t.hf_shape:
      raise CheckpointError(f"{path}: tensor {t.hf_name} has shape "
                            f"{tuple(tensors[t.hf_name].shape)}, config.json implies "
                            f"{t.hf_shape}")
    state[t.hf_name] = np.asarray(tensors[t.hf_name], np.float32)
  decoder = tensors.get("decoder.weight")
  if decoder is not None and not np.array_equal(
      decoder, tensors["model.embeddings.tok_embeddings.weight"]):
    raise CheckpointError(f"{path}: decoder.weight differs from the token embeddings; "
                          "lmjax ties them")
  known = {t.hf_name for t in expected} | {"decoder.weight", "decoder.bias"}
  for name in tensors:
    if name not in known and not name.startswith("classifier."):
      raise CheckpointError(f"{path}: unexpected tensor {name} (not a ModernBERT layout "
                            "lmjax knows)")
  params = _place(expected, state, cfg)
  params = jax.tree.map(lambda x: x.astype(cfg.param_dtype), params)
  if cfg.scan_layers:
    params["model"]["encoder"] = stack_layers(params["model"]["encoder"])
  return cfg, params


def _place(expected: list[HfTensor], state: dict[str, np.ndarray], cfg: ModernBertConfig,
           root: tuple[str, ...] = ("model",)) -> dict:
  """The parameters of `expected`'s tensors in `state`; the first layer's
  attention norm, which transformers' model has not, is ones (never applied)."""
  params: dict = {}
  for t in expected:
    node = params
    for key in t.path[:-1]:
      node = node.setdefault(key, {})
    node[t.path[-1]] = t.from_hf(np.asarray(state[t.hf_name]))
  first = params
  for key in (*root, "encoder", "layers_0"):
    first = first[key]
  first["attention_norm"] = {"scale": np.ones(cfg.hidden_size, np.float32)}
  return params


def save_hf_modernbert(cfg: ModernBertConfig, params: dict, path: str | os.PathLike,
                       tokenizer: dict[str, bytes] | None = None,
                       labels: list[str] | None = None,
                       token_ids: dict[str, int] | None = None) -> None:
  """Writes a directory transformers loads as a ModernBertForMaskedLM (the
  parameters of lmjax's, {'model', 'head', 'output_bias'}) or a
  ModernBertForSequenceClassification ({'model', 'head', 'classifier'},
  with the names of its `labels`), in either layer layout, with the
  tokenizer's files and its `token_ids`. The first layer's attention norm, which transformers'
  model has not, must be ones (it is never applied, and training leaves it
  so); ValueError otherwise, and for a config transformers cannot express."""
  params = nn.unbox(params)
  encoder = params["model"]["encoder"]
  if "layers" in encoder:
    params = {**params, "model": {**params["model"], "encoder": unstack_layers(encoder)}}
  unused = np.asarray(params["model"]["encoder"]["layers_0"]["attention_norm"]["scale"])
  if not np.all(unused == 1):
    raise ValueError("the first layer's attention norm is not ones: transformers' "
                     "ModernBERT has none to hold it")
  if ("classifier" in params) != bool(labels) or (
      labels and len(labels) != params["classifier"]["bias"].shape[0]):
    raise ValueError("a classifier's parameters need the names of its labels, one per output")
  tensors = {}
  for t in tensor_map(cfg, heads=not labels, num_labels=len(labels or ())):
    node = params
    for key in t.path:
      node = node[key]
    tensors[t.hf_name] = np.asarray(t.to_hf(np.asarray(node, np.float32)))
  write_directory(path, tensors, config_to_hf(cfg, not labels, labels, token_ids), tokenizer)
