"""The peers the benchmark compares lmjax with, on the same workload: Hugging
Face's torch BertForPreTraining / BertForSequenceClassification (or
ModernBertForMaskedLM, its head only at the masked positions as lmjax's is:
`sparse_prediction`, / ModernBertForSequenceClassification), trained as
lmjax trains (dropout, AdamW with BERT's b1, b2 and eps, clipping at 1), on
the point's sequences one a row, the batch padded to its longest (dynamic
padding, what transformers' collators do), whether lmjax packs or not.

torch and transformers are not lmjax dependencies: `--compare=hf_torch`
needs them installed (`pip install -r requirements-test.txt`)."""

import time

import dataclasses

from lmjax.benchmarking.points import (TRAIN, Point, Settings, batch_figures, padded_to_longest,
                                      synthetic_batch, timed_steps)


def _modernbert(transformers, point: Point, settings: Settings):
  """transformers' ModernBERT of the point's size, with the settings'
  dropout everywhere lmjax's has it, predicting at the masked positions
  only, as lmjax does."""
  from lmjax.model.modernbert import SIZES  # pylint: disable=import-outside-toplevel
  layers, hidden, heads, width = SIZES[point.size]
  cfg = transformers.ModernBertConfig(
      vocab_size=settings.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=heads, intermediate_size=width,
      max_position_embeddings=max(point.seq_len, 512), embedding_dropout=settings.dropout,
      mlp_dropout=settings.dropout, attention_dropout=settings.dropout,
      classifier_dropout=settings.dropout, sparse_prediction=True, pad_token_id=0,
      bos_token_id=2, cls_token_id=2, eos_token_id=3, sep_token_id=3)
  if point.objective == "classification":
    return transformers.ModernBertForSequenceClassification(cfg)
  return transformers.ModernBertForMaskedLM(cfg)


class HfTorchWorker:
  """transformers' BERT or ModernBERT on torch (CPU), eager, its default
  attention."""

  def __init__(self, point: Point, settings: Settings):
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    from lmjax.model.config import sized_fields  # pylint: disable=import-outside-toplevel
    self.torch, self.point, self.settings = torch, point, settings
    torch.manual_seed(0)
    host = padded_to_longest(synthetic_batch(dataclasses.replace(point, packing=False), settings))
    self.shape = batch_figures(host)
    tensor = lambda x: torch.from_numpy(x).long()  # noqa: E731
    self.inputs = dict(input_ids=tensor(host["input_ids"]),
                       attention_mask=tensor(host["input_mask"]))
    if point.architecture == "modernbert":
      self.model = _modernbert(transformers, point, settings)
    else:
      sized = sized_fields(point.size)
      cfg = transformers.BertConfig(
          vocab_size=settings.vocab_size, hidden_size=sized["hidden_size"],
          num_hidden_layers=sized["num_layers"], num_attention_heads=sized["num_heads"],
          intermediate_size=sized["intermediate_size"],
          hidden_dropout_prob=settings.dropout, attention_probs_dropout_prob=settings.dropout,
          max_position_embeddings=512)
      self.inputs["token_type_ids"] = tensor(host["segment_ids"])
      self.model = (transformers.BertForSequenceClassification(cfg)
                    if point.objective == "classification" else
                    transformers.BertForPreTraining(cfg))
    if point.objective == "classification":
      self.inputs["labels"] = tensor(host["labels"])
    else:
      labels = torch.full(self.inputs["input_ids"].shape, -100, dtype=torch.long)
      labels.scatter_(1, tensor(host["masked_positions"]), tensor(host["masked_ids"]))
      self.inputs["labels"] = labels
      if point.architecture == "bert":
        self.inputs["next_sentence_label"] = tensor(host["nsp_labels"])
    self.model.train()
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=TRAIN.learning_rate,
                                       betas=(TRAIN.b1, TRAIN.b2), eps=TRAIN.eps,
                                       weight_decay=TRAIN.weight_decay)
    self.dtype = {"float32": None, "bfloat16": torch.bfloat16,
                  "float16": torch.float16}[point.dtype]
    self.loss = float("nan")

  def _step(self):
    torch = self.torch
    with torch.autocast("cpu", dtype=self.dtype, enabled=self.dtype is not None):
      loss = self.model(**self.inputs).loss
    loss.backward()
    if self.settings.mode == "train":
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), TRAIN.grad_clip_norm)
      self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    self.loss = float(loss.detach())

  def setup(self) -> dict:
    start = time.perf_counter()
    self._step()
    first_step_s = time.perf_counter() - start
    for _ in range(self.settings.warmup):
      self._step()
    return dict(device="cpu", platform="cpu", devices=1, first_step_s=round(first_step_s, 2),
                torch_version=self.torch.__version__,
                torch_threads=self.torch.get_num_threads(), **self.shape)

  def run(self, count: int) -> list[float]:
    return timed_steps(self._step, count)

  def finish(self) -> dict:
    return dict(final_loss=round(self.loss, 4), loss_finite=self.loss == self.loss)


WORKERS = {"hf_torch": HfTorchWorker}
