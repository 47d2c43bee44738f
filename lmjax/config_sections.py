"""The config sections that configs/pretrain.py and configs/finetune.py
share (model, optimizer, mesh), and the one walk over a config's fields.
The benchmark builds its optimizer from the same section."""

from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections


def model() -> ml_collections.ConfigDict:
  """The model section: the architecture, its named size and how it
  computes."""
  return ml_collections.ConfigDict(dict(
      architecture="bert",  # bert | modernbert
      # bert: tiny | mini | small | medium | base | large; modernbert: tiny | base | large
      size="tiny",
      max_position=512,
      dropout_rate=0.1,
      attention_dropout_rate=0.1,
      dtype="float32",  # bfloat16 on accelerators
      param_dtype="float32",
      scan_layers=True,
      # On CPU, dots is faster than none and needs less memory (lmjax.benchmark).
      remat_policy="dots",  # none | full | dots | dots_no_batch
      attention_impl="xla",  # cudnn on GPUs (with attention_dropout_rate=0)
      # What a classifier reads: cls | mean (over each example's real tokens)
      classifier_pooling="cls",
      # ModernBERT's own (bert leaves them at these defaults):
      local_window=128,  # local layers see the tokens within half of it each side
      global_every=3,  # layer i attends globally when i % global_every == 0
  ))


# Fields added to the model section since runs were first saved, with the
# value a run saved before them had: such a run resumes and starts others.
ADDED_MODEL_FIELDS = {"architecture": "bert", "local_window": 128, "global_every": 3,
                      "classifier_pooling": "cls"}


def with_added_fields(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
  """A saved config (its JSON) with the model fields added since it was
  written that the config `now` has, at the values it ran with."""
  saved, now = dict(saved), now.to_dict() if hasattr(now, "to_dict") else now
  if isinstance(saved.get("model"), Mapping) and isinstance(now.get("model"), Mapping):
    added = {k: v for k, v in ADDED_MODEL_FIELDS.items() if k in now["model"]}
    saved["model"] = {**added, **saved["model"]}
  return saved


def optimizer(learning_rate: Any) -> dict[str, Any]:
  """The optimizer's fields of a train section: BERT's AdamW (b1, b2, eps,
  decay 0.01 off LayerNorm parameters and biases) with clipping at 1."""
  return dict(
      optimizer="adamw",  # adamw | lamb
      learning_rate=learning_rate,  # the peak; fine-tuning's None = by the encoder's width
      schedule="linear",  # linear | cosine | one_cycle | warmup_stable_decay
      end_learning_rate_fraction=0.0,
      decay_fraction=0.2,  # warmup_stable_decay: the last steps that decay
      weight_decay=0.01,  # not on LayerNorm parameters or biases
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      grad_clip_norm=1.0,  # 0 = no clipping
      grad_accum_steps=1,  # micro-batches per step (batch_size divisible by it)
  )


def mesh() -> ml_collections.ConfigDict:
  """The device mesh: -1 = the remaining devices; dcn_data > 1 lays the
  data axis over that many TPU slices (multi-slice)."""
  return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, dcn_data=1))


def leaves(tree: Mapping[str, Any] | None, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """('section.field', value) for every field of a nested dict (a config's
  `to_dict()` or its saved JSON), in order."""
  for key, value in (tree or {}).items():
    if isinstance(value, Mapping):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value
