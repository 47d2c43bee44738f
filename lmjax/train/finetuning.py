"""Fine-tuning BertForSequenceClassification on a task, and predicting with it:
the runs `lmjax.finetune` starts.

The encoder starts from a pretraining run's workdir (`config.init.from`), a
Hugging Face BERT directory (`config.init.from_hf`) or random weights
(`config.init.random`); the classifier on top starts from random weights
drawn with `config.seed`. The validation split is scored every epoch and the
best checkpoint by the task's main metric is kept in `DIR/best`; the test
split is scored with it at the end when it has labels.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
import scipy.special

from lmjax import parallel
from lmjax.data import classification as cls
from lmjax.data.loader import Loader, evaluation_batches, examples_dataset
from lmjax.data.sources import MissingSplitError
from lmjax.data.tokenizer import Tokenizer
from lmjax.errors import ConfigError, UserError, check_fields
from lmjax.model import BertConfig, BertForSequenceClassification, flops_per_token
from lmjax.train import checkpoint, optimizer, starts, steps
from lmjax.train.loop import (Schedule, Throughput, check_resumable, model_config,
                              run_loop)
from lmjax.train.metrics import (METRICS, REGRESSION_METRICS, MetricWriter,
                                 peak_flops_per_device, task_metrics)

_MUST_MATCH = ("seed", "init", "task", "model", "train.batch_size", "train.epochs",
               "train.steps", "train.grad_accum_steps", "train.learning_rate")


def check_config(config) -> None:
  """Raises ConfigError naming the first impossible field, before any work."""
  if config.mode not in ("train", "predict"):
    raise ConfigError(f"config.mode must be train or predict, got {config.mode!r}")
  init = config.init
  if init.random and init.from_hf:
    raise ConfigError("config.init.random and config.init.from_hf both set; choose one")
  if not (init.random or init.from_hf or init["from"]):
    raise ConfigError("config.init names no start: set config.init.from (a pretraining "
                      "workdir), config.init.from_hf or config.init.random=True")
  for name in cls.split_names(config.task.metrics):
    if name not in METRICS:
      raise ConfigError(f"config.task.metrics: unknown metric {name!r} (one of "
                        f"{', '.join(METRICS)})")
  check_fields("config.task", config.task, [
      ("max_seq_length", config.task.max_seq_length >= 4, "at least 4")])
  train = config.train
  check_fields("config.train", train, [
      ("epochs", train.epochs > 0 or train.steps > 0, "positive (or set train.steps)"),
      ("steps", train.steps >= 0, "at least 0"),
      ("warmup_fraction", 0 <= train.warmup_fraction < 1, "in [0, 1)"),
      ("eval_every", train.eval_every >= 0, "at least 0"),
      ("eval_batch_size", train.eval_batch_size >= 1, "at least 1"),
      ("log_every", train.log_every >= 1, "at least 1"),
      ("keep_checkpoints", train.keep_checkpoints >= 1, "at least 1")])
  model_config(config.model, vocab_size=8)  # a bad model field fails here


def _load_splits(task: cls.Task, data_dir):
  splits = {"train": cls.load_split(task, "train", data_dir)}
  try:
    splits["validation"] = cls.load_split(task, "validation", data_dir)
  except MissingSplitError as e:
    raise UserError(f"{e}; fine-tuning needs a validation split to choose the best "
                    "checkpoint") from None
  if splits["validation"].labels is None:
    raise UserError(f"{task.name}: the validation split has no labels")
  try:
    test = cls.load_split(task, "test", data_dir)
    if test.labels is not None:
      splits["test"] = test
    else:
      print(f"{task.name}: the test split has no labels; no test evaluation", flush=True)
  except MissingSplitError:
    print(f"{task.name}: no test split; no test evaluation", flush=True)
  return splits


def _device_batches(arrays: dict, batch_size: int, mesh) -> list[dict]:
  """Every example once, as sharded global batches (the last one padded)."""
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  return [parallel.shard_batch(b, mesh)
          for b in evaluation_batches(arrays, batch_size, **process)]


def _logits(eval_step, state, batches: list[dict], count: int) -> np.ndarray:
  """The model's logits [count, K] over `batches`, padding dropped."""
  out = jax.device_get([eval_step(state, b) for b in batches])
  return np.concatenate(out)[:count].astype(np.float64)


class _Scorer:
  """Evaluates a state on a split: logits on device, metrics on the host."""

  def __init__(self, eval_step, task: cls.Task, encoded: cls.Encoded, batch_size: int,
               mesh):
    self.task, self.labels, self.eval_step = task, encoded.arrays["labels"], eval_step
    self.batches = _device_batches(encoded.arrays, batch_size, mesh)

  def __call__(self, state, prefix: str) -> dict[str, float]:
    logits = _logits(self.eval_step, state, self.batches, len(self.labels))
    if self.task.is_regression:
      loss = np.mean((logits[:, 0] - self.labels) ** 2)
    else:
      log_probs = scipy.special.log_softmax(logits, axis=1)
      loss = -np.mean(log_probs[np.arange(len(self.labels)), self.labels])
    scores = task_metrics(self.task.metrics, logits, self.labels)
    return {f"{prefix}_loss": float(loss), **{f"{prefix}_{k}": v for k, v in scores.items()}}


def _majority(task: cls.Task, train_labels: np.ndarray, labels: np.ndarray, prefix: str):
  """The metrics of always answering the most frequent training label."""
  if task.is_regression:
    return {}
  majority = np.bincount(train_labels, minlength=task.num_labels).argmax()
  logits = np.zeros((len(labels), task.num_labels))
  logits[:, majority] = 1
  return {f"{prefix}_majority_{k}": v
          for k, v in task_metrics(task.metrics, logits, labels).items()}


def finetune(config, workdir: str | os.PathLike) -> dict:
  """Fine-tunes as `config` says; returns the summary (also DIR/summary.json)."""
  check_config(config)
  workdir = Path(workdir)
  train = config.train
  mesh = parallel.make_mesh(**config.mesh)
  data_dir = config.task.data_dir or None
  task = cls.resolve_task(config.task, data_dir)
  if task.is_regression and not set(task.metrics) <= set(REGRESSION_METRICS):
    raise ConfigError(f"config.task.metrics: {task.name} is a regression task; use "
                      f"{' or '.join(REGRESSION_METRICS)}, not {', '.join(task.metrics)}")
  start_point = starts.load_start(config, mesh)
  model_cfg = start_point.config
  length = config.task.max_seq_length
  if length > model_cfg.max_position:
    raise ConfigError(f"config.task.max_seq_length ({length}) exceeds the model's "
                      f"{model_cfg.max_position} positions")
  splits = _load_splits(task, data_dir)
  encoded = {name: cls.encode(ex, start_point.tokenizer, length)
             for name, ex in splits.items()}
  sizes = {name: len(e) for name, e in encoded.items()}
  truncated = {name: e.truncated for name, e in encoded.items()}
  print(f"{task.name}: {', '.join(f'{k} {v}' for k, v in sizes.items())} examples; "
        f"truncated to {length} tokens: "
        f"{', '.join(f'{k} {v}' for k, v in truncated.items())}; "
        f"encoder from {start_point.origin}", flush=True)

  steps_per_epoch = math.ceil(sizes["train"] / train.batch_size)
  total = train.steps or max(1, round(train.epochs * sizes["train"] / train.batch_size))
  resolved = ml_collections.ConfigDict(train.to_dict())
  resolved.steps, resolved.warmup_steps = total, int(train.warmup_fraction * total)
  optimizer.check_train_config(resolved)
  eval_every = train.eval_every or steps_per_epoch
  tx = optimizer.create_optimizer(resolved)

  model = BertForSequenceClassification(model_cfg, task.num_labels)
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  train_data = examples_dataset(encoded["train"].arrays, train.batch_size, config.seed,
                                **process)
  example = {k: v[:1] for k, v in encoded["train"].arrays.items()}
  state, shardings = steps.create_train_state(model, tx, mesh, example,
                                              jax.random.key(config.seed))
  if start_point.params is not None:
    state = starts.with_encoder(state, shardings, start_point.params)

  lead = jax.process_index() == 0
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", keep=train.keep_checkpoints)
  best = checkpoint.Checkpoints(workdir / "best", keep=1, json_items=("metrics",))
  writer = MetricWriter(workdir, enabled=lead)
  config_json = json.loads(config.to_json())
  start, loader_state = ckpts.latest_step() or 0, {"step": 0}
  if start:
    state, loader_state, saved = ckpts.restore(start, checkpoint.abstract_like(state,
                                                                               shardings))
    check_resumable(saved, config, _MUST_MATCH)
    print(f"resuming from the checkpoint of step {start} in {workdir}", flush=True)
  elif lead:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tokenizer.model").write_bytes(start_point.tokenizer.model_proto)
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
    (workdir / "task.json").write_text(json.dumps(task.to_json(), indent=2) + "\n")
    (workdir / "model.json").write_text(
        json.dumps(dataclasses.asdict(model_cfg), indent=2) + "\n")
  writer.truncate_after(start)
  best_step = best.latest_step()
  best_metrics = best.read_json(best_step, "metrics") if best_step is not None else None

  eval_step = steps.jit_eval_step(steps.make_classifier_eval_step(model), shardings, mesh)
  scorers = {name: _Scorer(eval_step, task, encoded[name], train.eval_batch_size, mesh)
             for name in ("validation", "test") if name in encoded}
  main = f"eval_{task.metrics[0]}"
  params_shardings = {"params": shardings.params}

  def evaluate(state, step: int) -> dict:
    nonlocal best_step, best_metrics
    scores = scorers["validation"](state, "eval")
    if best_metrics is None or scores[main] > best_metrics[main]:
      best_step, best_metrics = step, scores
      best.save(step, {"params": state.params}, scores)
    return scores

  if start == 0:  # where the run starts from, before any update
    writer.write(0, evaluate(state, 0))

  train_step = steps.jit_train_step(
      steps.make_classifier_train_step(model, tx, train.grad_accum_steps,
                                       optimizer.learning_rate_schedule(resolved)),
      shardings, mesh)
  loader = Loader(train_data, start=loader_state["step"], num_threads=2)
  flops = flops_per_token(model_cfg, length, 0)
  try:
    result = run_loop(
        state, train_step, loader, rng=jax.random.key(config.seed + 1), mesh=mesh,
        schedule=Schedule(total, train.log_every, eval_every,
                          train.checkpoint_every or eval_every),
        ckpts=ckpts, writer=writer, config_json=config_json, evaluate=evaluate,
        throughput=Throughput(train.batch_size * length, flops,
                              peak_flops_per_device(train.cpu_peak_tflops)),
        start=start, desc="finetune", progress_keys=("loss", "accuracy"))
  finally:
    ckpts.close()
    best.wait()
    writer.close()

  summary = dict(task=task.name, init=start_point.origin, step=result.step,
                 stopped_by=result.stopped_by, main_metric=task.metrics[0],
                 **{f"{k}_examples": v for k, v in sizes.items()},
                 **{f"{k}_truncated": v for k, v in truncated.items()})
  if not result.stopped_by:
    restored = best.restore(best_step, checkpoint.abstract_like(
        {"params": result.state.params}, params_shardings))[0]
    best_state = result.state.replace(params=restored["params"])
    summary["best_step"] = best_step
    train_labels = encoded["train"].arrays["labels"]
    for name, prefix in (("validation", "eval"), ("test", "test")):
      if name in scorers:
        summary.update(scorers[name](best_state, prefix))
        summary.update(_majority(task, train_labels, encoded[name].arrays["labels"],
                                 prefix))
    writer.write(result.step, {k: v for k, v in summary.items() if k.startswith("test_")})
  best.close()
  summary = {k: round(v, 5) if isinstance(v, float) else v for k, v in summary.items()}
  if lead:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def predict(config, workdir: str | os.PathLike) -> dict:
  """Writes the predictions of DIR's best checkpoint for `config.predict.input`
  as JSONL: texts, label and class probabilities (or score). Returns a summary."""
  workdir = Path(workdir)
  if not config.predict.input:
    raise ConfigError("config.predict.input is required in predict mode (a text file, "
                      "one text a line, or tsv:/csv:/jsonl:PATH)")
  needed = ("task.json", "model.json", "tokenizer.model", "best")
  if not all((workdir / name).exists() for name in needed):
    raise UserError(f"{workdir}: no fine-tuned model (run python -m lmjax.finetune "
                    f"--workdir={workdir} first)")
  task = cls.Task.from_json(json.loads((workdir / "task.json").read_text()))
  model_cfg = BertConfig(**json.loads((workdir / "model.json").read_text()))
  tokenizer = Tokenizer.load(workdir / "tokenizer.model")
  texts = cls.read_texts(config.predict.input, task)
  saved = json.loads((workdir / "config.json").read_text())
  encoded = cls.encode(cls.Examples(texts, None), tokenizer, saved["task"]["max_seq_length"])

  mesh = parallel.make_mesh(**config.mesh)
  model = BertForSequenceClassification(model_cfg, task.num_labels)
  example = {k: v[:1] for k, v in encoded.arrays.items()}
  abstract = steps.abstract_train_state(model, optax.set_to_zero(), mesh, example)
  best = checkpoint.Checkpoints(workdir / "best", keep=1, json_items=("metrics",))
  try:
    step = best.latest_step()
    if step is None:
      raise UserError(f"{workdir}: no best checkpoint yet")
    restored = best.restore(step, {"params": abstract.params})[0]
  finally:
    best.close()
  state = steps.TrainState(jax.device_put(np.int32(step), parallel.replicated(mesh)),
                           restored["params"], ())
  shardings = jax.tree.map(lambda x: x.sharding, state)
  eval_step = steps.jit_eval_step(steps.make_classifier_eval_step(model), shardings, mesh)
  logits = _logits(eval_step, state, _device_batches(
      encoded.arrays, config.train.eval_batch_size, mesh), len(texts))

  output = Path(config.predict.output or workdir / "predictions.jsonl").expanduser()
  if jax.process_index() == 0:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      for pair, row in zip(texts, logits):
        record = dict(zip(("text", "text_pair"), pair))
        if task.is_regression:
          record["score"] = round(float(row[0]), 6)
        else:
          probs = scipy.special.softmax(row)
          record["label"] = task.labels[int(row.argmax())]
          record["probabilities"] = {name: round(float(p), 6)
                                     for name, p in zip(task.labels, probs)}
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, output)
  return dict(predictions=len(texts), truncated=encoded.truncated, output=str(output),
              checkpoint_step=step)
