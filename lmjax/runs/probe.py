"""A linear probe of what pretraining learned: at each evaluation, the
frozen encoder's features of a labelled task's examples (mean of the last
layer over real tokens) train a logistic regression on a sample of the task's
training split, scored on a sample of its validation split. A run then shows
whether its representations improve, not only its MLM loss."""

import ml_collections
import numpy as np

from lmjax.data import tasks
from lmjax.data.task_input import bucket_lengths
from lmjax.errors import ConfigError, MissingSplitError, UserError
from lmjax.model.rows import inputs_of
from lmjax.runs.scoring import device_batches, logits
from lmjax.train import baselines, steps


def resolve(section) -> tasks.Task | None:
  """The probe's task (config.probe), None when `source` is ''; a bad one
  is one line naming config.probe."""
  for name in ("train_examples", "eval_examples"):
    if section[name] < 2:
      raise ConfigError(f"config.probe.{name} must be at least 2, got {section[name]!r}")
  if not section.source:
    return None
  task_section = ml_collections.ConfigDict(dict(
      source=section.source, text_fields=section.text_fields, label_field=section.label_field,
      labels=section.labels, regression=False, metrics="accuracy"))
  try:
    return tasks.resolve_task(task_section, section.data_dir or None, "config.probe")
  except ConfigError:
    raise
  except UserError as e:  # the task's files: say whose they are
    raise UserError(f"config.probe: {e}") from None


def _sample(examples: tasks.Examples, count: int, seed: int) -> tasks.Examples:
  order = np.random.default_rng(seed).permutation(len(examples))[:count]
  return tasks.Examples([examples.texts[i] for i in order], examples.labels[order])


class Probe:
  """`probe(params) -> {eval_probe_accuracy}` for a pretraining model's params."""

  def __init__(self, task: tasks.Task, section, model, tokenizer, max_seq_length: int,
               params_shardings, mesh, batch_size: int = 128, packed: bool = True):
    """Reads and encodes the probe's samples and puts them on `mesh` in
    batches of about `batch_size` rows, packed (or one example a row, by
    length)."""
    splits = {}
    for seed, (split, count) in enumerate((("train", section.train_examples),
                                           ("validation", section.eval_examples))):
      try:
        examples = tasks.load_split(task, split, section.data_dir or None)
      except MissingSplitError as e:
        raise UserError(f"config.probe: {e}") from None
      splits[split] = _sample(examples, count, seed)
    buckets = bucket_lengths(max_seq_length, 4)
    batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size  # splits evenly
    self._batches = {
        split: device_batches(tasks.encode(ex, tokenizer, max_seq_length).arrays, batch_size,
                              mesh, buckets, max_seq_length if packed else None)
        for split, ex in splits.items()}
    self._labels = {split: ex.labels for split, ex in splits.items()}
    self._features = steps.jit_eval_step(
        lambda params, batch: model.apply(
            {"params": params}, **inputs_of(model, batch), method="mean_pooled"),
        params_shardings, mesh)

  def __call__(self, params) -> dict[str, float]:
    features = {split: logits(self._features, params, batches)
                for split, batches in self._batches.items()}
    return {"eval_probe_accuracy": baselines.linear_probe(
        features["train"], self._labels["train"], features["validation"],
        self._labels["validation"])}
