"""Hugging Face BERT checkpoints <-> lmjax parameters.

`load_hf_bert` reads a Hugging Face BERT directory (config.json plus
model.safetensors, a sharded safetensors index, or pytorch_model.bin read with
`weights_only`) into a BertConfig and BertForPreTraining parameters;
`save_hf_bert` writes one that `transformers.BertForPreTraining.from_pretrained`
loads. Torch Linear weights are [out, in]; lmjax kernels are [in, out], with the
attention heads as their own axis.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from lmjax.errors import CheckpointError, ConfigError
from lmjax.interop import tensor_files
from lmjax.model.config import BertConfig
from lmjax.model.encoder import stack_layers, unstack_layers

# Hugging Face `hidden_act` names -> lmjax activations.
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
                   "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                   "relu": "relu", "silu": "silu", "swish": "silu"}
# config.json key -> BertConfig field.
_HF_FIELDS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size",
              "num_hidden_layers": "num_layers",
              "num_attention_heads": "num_heads",
              "intermediate_size": "intermediate_size",
              "max_position_embeddings": "max_position",
              "type_vocab_size": "type_vocab_size",
              "hidden_dropout_prob": "dropout_rate",
              "attention_probs_dropout_prob": "attention_dropout_rate",
              "layer_norm_eps": "layer_norm_eps",
              "initializer_range": "initializer_range"}
# Tensors a checkpoint may hold that lmjax has no use for.
_IGNORED_SUFFIXES = ("position_ids",)
_IGNORED_PREFIXES = ("classifier.", "cls.predictions.decoder.")


@dataclasses.dataclass(frozen=True)
class HfTensor:
  """One Hugging Face tensor and where it lives in lmjax's parameters."""
  hf_name: str
  path: tuple[str, ...]
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  transpose: bool  # a torch Linear weight: [out, in] in HF

  def from_hf(self, array: np.ndarray) -> np.ndarray:
    return (array.T if self.transpose else array).reshape(self.shape)

  def to_hf(self, array: np.ndarray) -> np.ndarray:
    if self.transpose:
      return array.reshape(self.hf_shape[::-1]).T
    return array.reshape(self.hf_shape)


def _tensor_map(cfg: BertConfig, heads: bool, num_labels: int = 0) -> list[HfTensor]:
  """Every tensor of a (loop-layout) BertForPreTraining (`heads`), a
  BertForSequenceClassification (`num_labels`) or a BertModel, HF name first."""
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  n, h = cfg.num_heads, cfg.head_dim
  out: list[HfTensor] = []

  def linear(hf, path, d_in, d_out, kernel_shape=None, bias_shape=None):
    out.append(HfTensor(f"{hf}.weight", (*path, "kernel"), (d_out, d_in),
                       kernel_shape or (d_in, d_out), True))
    out.append(HfTensor(f"{hf}.bias", (*path, "bias"), (d_out,),
                       bias_shape or (d_out,), False))

  def norm(hf, path):
    out.append(HfTensor(f"{hf}.weight", (*path, "scale"), (d,), (d,), False))
    out.append(HfTensor(f"{hf}.bias", (*path, "bias"), (d,), (d,), False))

  emb = ("bert", "embeddings")
  for hf, name, rows in (("word_embeddings", "word_embeddings", v),
                         ("position_embeddings", "position_embeddings",
                          cfg.max_position),
                         ("token_type_embeddings", "token_type_embeddings",
                          cfg.type_vocab_size)):
    out.append(HfTensor(f"bert.embeddings.{hf}.weight", (*emb, name, "embedding"),
                       (rows, d), (rows, d), False))
  norm("bert.embeddings.LayerNorm", (*emb, "layer_norm"))
  for i in range(cfg.num_layers):
    hf, path = f"bert.encoder.layer.{i}", ("bert", "encoder", f"layers_{i}")
    for proj in ("query", "key", "value"):
      linear(f"{hf}.attention.self.{proj}", (*path, "attention", proj), d, d,
             (d, n, h), (n, h))
    linear(f"{hf}.attention.output.dense", (*path, "attention", "out"), d, d,
           (n, h, d))
    norm(f"{hf}.attention.output.LayerNorm", (*path, "attention_norm"))
    linear(f"{hf}.intermediate.dense", (*path, "mlp", "wi"), d, f)
    linear(f"{hf}.output.dense", (*path, "mlp", "wo"), f, d)
    norm(f"{hf}.output.LayerNorm", (*path, "mlp_norm"))
  linear("bert.pooler.dense", ("bert", "pooler"), d, d)
  if heads:
    linear("cls.predictions.transform.dense", ("mlm", "transform"), d, d)
    norm("cls.predictions.transform.LayerNorm", ("mlm", "transform_norm"))
    out.append(HfTensor("cls.predictions.bias", ("mlm", "output_bias"), (v,), (v,),
                       False))
    linear("cls.seq_relationship", ("nsp",), d, 2)
  if num_labels:
    linear("classifier", ("classifier",), d, num_labels)
  return out


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> BertConfig:
  """Returns the BertConfig of a Hugging Face BERT config.json dict."""
  if hf.get("model_type", "bert") != "bert":
    raise ConfigError(f"model_type is {hf['model_type']!r}, not 'bert'")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ConfigError(f"position_embedding_type {hf['position_embedding_type']!r}"
                      " is not supported (only 'absolute')")
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise ConfigError("decoder BERT (is_decoder / add_cross_attention) is not "
                      "supported")
  act = hf.get("hidden_act", "gelu")
  if act not in _HF_ACTIVATIONS:
    raise ConfigError(f"hidden_act {act!r} is not supported (one of "
                      f"{', '.join(_HF_ACTIVATIONS)})")
  fields = {ours: hf[theirs] for theirs, ours in _HF_FIELDS.items() if theirs in hf}
  return BertConfig(**{**fields, "hidden_act": _HF_ACTIVATIONS[act], **overrides})


def label_fields(labels: list[str] | None) -> dict[str, Any]:
  """A classifier's config.json fields for its class names (one name: a
  regressor); none without labels."""
  if not labels:
    return {}
  return dict(id2label=dict(enumerate(labels)),
              label2id={name: i for i, name in enumerate(labels)},
              problem_type="regression" if len(labels) == 1 else "single_label_classification")


def config_to_hf(cfg: BertConfig, heads: bool = True,
                 labels: list[str] | None = None) -> dict[str, Any]:
  """Returns the Hugging Face config.json dict of a BertConfig: of a
  BertForPreTraining (`heads`), a BertForSequenceClassification (`labels`:
  the class names, or one name for a regressor) or a BertModel."""
  hf = {theirs: getattr(cfg, ours) for theirs, ours in _HF_FIELDS.items()}
  act = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu",
         "silu": "silu"}[cfg.hidden_act]
  architecture = ("BertForSequenceClassification" if labels else
                  "BertForPreTraining" if heads else "BertModel")
  return {"architectures": [architecture], "model_type": "bert", **hf, "hidden_act": act,
          "position_embedding_type": "absolute", "pad_token_id": 0,
          "tie_word_embeddings": True, "dtype": "float32", **label_fields(labels)}


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
  """The tensors of a Hugging Face directory, by name."""
  if (path / "model.safetensors").is_file():
    return tensor_files.read_safetensors(path / "model.safetensors")
  index = path / "model.safetensors.index.json"
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    tensors = {}
    for shard in shards:
      if not (path / shard).is_file():
        raise CheckpointError(f"{path / shard}: shard named in {index.name} is missing")
      tensors.update(tensor_files.read_safetensors(path / shard))
    return tensors
  if (path / "pytorch_model.bin").is_file():
    return tensor_files.read_torch_bin(path / "pytorch_model.bin")
  raise CheckpointError(f"{path}: no model.safetensors, model.safetensors."
                        "index.json or pytorch_model.bin")


def read_config(path: Path) -> dict[str, Any]:
  """The config.json of a Hugging Face directory (CheckpointError when
  there is none, or it is not a JSON object)."""
  config_file = path / "config.json"
  if not config_file.is_file():
    raise CheckpointError(f"{path}: no config.json (not a Hugging Face model directory)")
  try:
    hf_config = json.loads(config_file.read_text())
  except ValueError as e:
    raise CheckpointError(f"{config_file}: {e}") from None
  if not isinstance(hf_config, dict):
    raise CheckpointError(f"{config_file}: not a JSON object")
  return hf_config


def model_type(path: str | os.PathLike) -> str:
  """A Hugging Face directory's model_type (bert when it names none)."""
  return str(read_config(Path(path)).get("model_type", "bert"))


def _canonical_name(name: str) -> str:
  """HF tensor name with the 'bert.' prefix and LayerNorm.weight/bias, as
  written by BertForPreTraining; older checkpoints say gamma/beta, and
  BertModel's have no prefix."""
  if name.endswith("LayerNorm.gamma"):
    name = name[:-len("gamma")] + "weight"
  elif name.endswith("LayerNorm.beta"):
    name = name[:-len("beta")] + "bias"
  if name.startswith(("embeddings.", "encoder.", "pooler.")):
    name = "bert." + name
  return name


class HeadsError(CheckpointError):
  """The checkpoint's pretraining heads (cls.*) are missing or misshapen:
  its encoder can still be read, with heads=False."""


def load_hf_bert(path: str | os.PathLike, heads: bool = True, num_labels: int = 0,
                 **overrides: Any) -> tuple[BertConfig, dict]:
  """Reads a Hugging Face BERT directory.

  Returns (config, params): BertForPreTraining parameters {'bert', 'mlm',
  'nsp'}, or only {'bert'} with `heads=False` (any BERT checkpoint, e.g. a
  BertModel or a classifier); with `num_labels`, also a classifier's
  {'classifier'} when the checkpoint has one of that many outputs.
  `overrides` set BertConfig fields the checkpoint does not fix
  (scan_layers, dtype, remat_policy, ...).
  Raises CheckpointError naming the first missing or mismatched tensor
  (HeadsError when it is one of the heads').
  """
  path = Path(path)
  try:
    config = config_from_hf(read_config(path), **overrides)
  except (ValueError, TypeError) as e:
    raise CheckpointError(f"{path / 'config.json'}: {e}") from None
  tensors = {_canonical_name(k): v for k, v in read_checkpoint(path).items()}

  decoder = tensors.get("cls.predictions.decoder.weight")
  word = tensors.get("bert.embeddings.word_embeddings.weight")
  if heads and decoder is not None and word is not None and not np.array_equal(
      decoder, word):
    raise CheckpointError(f"{path}: cls.predictions.decoder.weight differs from "
                          "the word embeddings; lmjax ties them (load with heads=False)")

  params: dict = {}
  classifier = tensors.get("classifier.bias")
  if classifier is None or classifier.shape != (num_labels,):
    num_labels = 0  # none, or another task's: the fine-tuning run draws its own
  expected = _tensor_map(config, heads, num_labels)
  for t in expected:
    error = HeadsError if t.hf_name.startswith("cls.") else CheckpointError
    if t.hf_name not in tensors:
      raise error(f"{path}: tensor {t.hf_name} is missing")
    array = tensors[t.hf_name]
    if tuple(array.shape) != t.hf_shape:
      raise error(f"{path}: tensor {t.hf_name} has shape "
                            f"{tuple(array.shape)}, config.json implies {t.hf_shape}")
    node = params
    for key in t.path[:-1]:
      node = node.setdefault(key, {})
    node[t.path[-1]] = t.from_hf(np.asarray(array, np.float32)).astype(
        config.param_dtype)

  known = {t.hf_name for t in expected}
  for name in tensors:
    ignorable = (name.endswith(_IGNORED_SUFFIXES) or name.startswith(_IGNORED_PREFIXES)
                 or (not heads and name.startswith("cls.")))
    if name not in known and not ignorable:
      raise CheckpointError(f"{path}: unexpected tensor {name} (not a BERT "
                            "layout lmjax knows)")
  if config.scan_layers:
    params["bert"]["encoder"] = stack_layers(params["bert"]["encoder"])
  return config, params


def save_hf_bert(config: BertConfig, params: dict, path: str | os.PathLike,
                 tokenizer: dict[str, bytes] | None = None,
                 labels: list[str] | None = None) -> None:
  """Writes config.json and model.safetensors (float32) for Hugging Face.

  `params` are BertForPreTraining's ({'bert', 'mlm', 'nsp'}), a bare
  encoder's ({'bert'}) or a classifier's ({'bert', 'classifier'}, with the
  names of its `labels`), in either layer layout. `tokenizer` (a
  Tokenizer's `files`: tokenizer.model, or WordPiece's tokenizer.json or
  vocab.txt with tokenizer_config.json) is written too, so that the
  directory carries its tokenizer. Files are replaced
  atomically, so an existing directory is never left half-written.
  """
  params = nn.unbox(params)
  heads = "mlm" in params
  encoder = params["bert"]["encoder"]
  if "layers" in encoder:
    params = {**params, "bert": {**params["bert"], "encoder": unstack_layers(encoder)}}
  tensors = {}
  if ("classifier" in params) != bool(labels) or (
      labels and len(labels) != params["classifier"]["bias"].shape[0]):
    raise ValueError("a classifier's parameters need the names of its labels, one per output")
  if labels and config.classifier_pooling != "cls":
    raise ValueError(f"its classifier pools by the {config.classifier_pooling} of the tokens; "
                     "transformers' BertForSequenceClassification pools at [CLS]")
  for t in _tensor_map(config, heads, len(labels or ())):
    node = params
    for key in t.path:
      node = node[key]
    tensors[t.hf_name] = np.asarray(t.to_hf(np.asarray(node, np.float32)))
  write_directory(path, tensors, config_to_hf(config, heads, labels), tokenizer)


def write_directory(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                    hf_config: dict[str, Any], tokenizer: dict[str, bytes] | None) -> None:
  """model.safetensors, the tokenizer's files and config.json (last), each
  replaced atomically."""
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  tensor_files.write_safetensors(path / "model.safetensors", tensors,
                                 metadata={"format": "pt"})
  for name, content in (tokenizer or {}).items():
    tmp = path / f"{name}.tmp"
    tmp.write_bytes(content)
    os.replace(tmp, path / name)
  tmp = path / "config.json.tmp"
  tmp.write_text(json.dumps(hf_config, indent=2) + "\n")
  os.replace(tmp, path / "config.json")
