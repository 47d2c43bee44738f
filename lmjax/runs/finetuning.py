"""The fine-tuning run `lmjax.finetune` starts: a sequence classifier (BERT's
or ModernBERT's, config.model.architecture) on a task with the
classification objective, on the run scaffold.

The encoder starts where `config.init.source` says (lmjax.runs.init_sources); the
classifier on top starts from random weights drawn with `config.seed`. The
validation split is scored at step 0 and every epoch, the best checkpoint by
the task's main metric is kept in `DIR/best`, and the test split is scored
with it at the end when it has labels.
"""

import dataclasses
import json
import math
import os

import jax
import ml_collections
import numpy as np

from lmjax import parallel, paths
from lmjax.data import tasks
from lmjax.data.cache import LEARN
from lmjax.data.packing import Packing
from lmjax.data.task_input import bucket_lengths, examples_dataset
from lmjax.errors import ConfigError, MissingSplitError, UserError, check_fields
from lmjax.model import architectures, flops_per_token
from lmjax.runs import init_sources
from lmjax.runs.scoring import DeviceBatches, device_batches, logits
from lmjax.train import baselines, classification, optimizer, steps
from lmjax.train.task_metrics import METRICS, REGRESSION_METRICS
from lmjax.trainer import scaffold
from lmjax.trainer.checkpoints import BestCheckpoint
from lmjax.trainer.loop import Schedule
from lmjax.trainer.throughput import Throughput, peak_flops_per_device

# Config fields a resumed run must share with the run that wrote the checkpoint;
# not those that change no result (packing, length buckets, threads, data_dir).
_MUST_MATCH = ("seed", "init", "model", "train.batch_size", "train.epochs", "train.steps",
               "train.grad_accum_steps", "train.learning_rate",
               *(f"task.{name}" for name in ("source", "text_fields", "label_field", "labels",
                                             "regression", "metrics", "max_seq_length",
                                             "group_by_length", "tokenizer")))


def check_config(config) -> None:
  """Raises ConfigError naming the first impossible field, before any work."""
  if config.mode not in ("train", "predict"):
    raise ConfigError(f"config.mode must be train or predict, got {config.mode!r}")
  if config.mode == "predict" and not config.predict.input:
    raise ConfigError("config.predict.input is required in predict mode (a text file, "
                      "one text a line, or tsv:/csv:/jsonl:PATH)")
  init_sources.parse_source(config.init.source)
  for name in tasks.split_names(config.task.metrics):
    if name not in METRICS:
      raise ConfigError(f"config.task.metrics: unknown metric {name!r} (one of "
                        f"{', '.join(METRICS)})")
  check_fields("config.task", config.task, [
      ("max_seq_length", config.task.max_seq_length >= 4, "at least 4"),
      ("packed_length", config.task.packed_length is None or config.task.packed_length >= 4,
       "at least 4 (None: max_seq_length)"),
      ("length_buckets", 1 <= config.task.length_buckets <= 64, "in [1, 64]"),
      ("group_by_length", config.task.group_by_length >= 0, "at least 0"),
      ("num_threads", config.task.num_threads >= 0, "at least 0"),
      ("tokenizer", not config.task.tokenizer.startswith(LEARN),
       "a file: learn:N is for pretraining (config.data.tokenizer); fine-tuning takes its "
       "encoder's tokenizer, e.g. DIR/tokenizer.model of a pretraining run")])
  train = config.train
  scaffold.check_train_fields(train)
  optimizer.check_config(train)
  check_fields("config.train", train, [
      ("epochs", train.epochs > 0 or train.steps > 0, "positive (or set train.steps)"),
      ("steps", train.steps >= 0, "at least 0"),
      ("warmup_fraction", 0 <= train.warmup_fraction < 1, "in [0, 1)"),
      ("decay_fraction", train.schedule != "warmup_stable_decay"
       or train.warmup_fraction + train.decay_fraction <= 1,
       "at most 1 - warmup_fraction with schedule=warmup_stable_decay"),
      *((f, train[f] >= 0, "at least 0") for f in ("eval_every", "checkpoint_every")),
      ("eval_batch_size", train.eval_batch_size >= 1, "at least 1")])
  architectures.check_section(config.model)


def _check_task(task: tasks.Task) -> None:
  if task.is_regression and not set(task.metrics) <= set(REGRESSION_METRICS):
    raise ConfigError(f"config.task.metrics: {task.name} is a regression task; use "
                      f"{' or '.join(REGRESSION_METRICS)}, not {', '.join(task.metrics)}")


def _load_splits(task: tasks.Task, data_dir) -> dict[str, tasks.Examples]:
  """train and validation (both needed), and test when it has labels."""
  splits = {"train": tasks.load_split(task, "train", data_dir)}
  try:
    splits["validation"] = tasks.load_split(task, "validation", data_dir)
  except MissingSplitError as e:
    raise UserError(f"{e}; fine-tuning needs a validation split to choose the best "
                    "checkpoint") from None
  if splits["validation"].labels is None:
    raise UserError(f"{task.name}: the validation split has no labels")
  try:
    test = tasks.load_split(task, "test", data_dir)
  except MissingSplitError:
    print(f"{task.name}: no test split; no test evaluation", flush=True)
    return splits
  if test.labels is None:
    print(f"{task.name}: the test split has no labels; no test evaluation", flush=True)
  else:
    splits["test"] = test
  return splits


def _encoded_splits(task, config, start: init_sources.Start
                    ) -> tuple[dict[str, tasks.Examples], dict[str, tasks.Encoded]]:
  length = config.task.max_seq_length
  if length > start.config.max_position:
    raise ConfigError(f"config.task.max_seq_length ({length}) exceeds the model's "
                      f"{start.config.max_position} positions")
  splits = _load_splits(task, config.task.data_dir or None)
  encoded = {name: tasks.encode(ex, start.tokenizer, length) for name, ex in splits.items()}
  check_packing(config.task, encoded, start.config.max_position)
  print(f"{task.name}: {', '.join(f'{k} {len(e)}' for k, e in encoded.items())} examples; "
        f"truncated to {length} tokens: "
        f"{', '.join(f'{k} {e.truncated}' for k, e in encoded.items())}; "
        f"encoder from {start.origin}", flush=True)
  return splits, encoded


@dataclasses.dataclass
class _Scorer:
  """A labelled split on device, scored with the task's metrics."""
  eval_step: object
  metrics: tuple[str, ...]
  batches: DeviceBatches
  labels: np.ndarray

  def __call__(self, params, prefix: str) -> dict[str, float]:
    out = logits(self.eval_step, params, self.batches)
    return classification.score(self.metrics, out, self.labels, prefix)


def length_buckets(task_config) -> tuple[int, ...]:
  """The lengths batches are padded to (config.task.length_buckets of them)."""
  return bucket_lengths(task_config.max_seq_length, task_config.length_buckets)


def packed_length(task_config) -> int | None:
  """The length of packed rows; None when the task's batches are not packed."""
  if not task_config.get("packing", False):
    return None
  return task_config.get("packed_length") or task_config["max_seq_length"]


def check_packing(task_config, encoded: dict[str, tasks.Encoded], max_position: int) -> None:
  """Raises ConfigError when packed rows cannot hold the longest example
  or are longer than the model's positions."""
  length = packed_length(task_config)
  if length is None:
    return
  if length > max_position:
    raise ConfigError(f"config.task.packed_length ({length}) exceeds the model's "
                      f"{max_position} positions")
  longest = max(int(e.arrays["input_mask"].sum(1).max(initial=0)) for e in encoded.values())
  if longest > length:
    raise ConfigError(f"config.task.packed_length ({length}) is shorter than the longest "
                      f"example ({longest} tokens); set it to at least {longest}, or "
                      "--config.task.packing=false")


# The peak learning rate by the encoder's width when config.train.learning_rate
# is None: narrow encoders (BERT-tiny and -mini; ModernBERT-tiny), often from
# few pretraining steps or none, learn nothing in a few epochs at BERT's rates;
# BERT-base and -large take the BERT paper's range.
LEARNING_RATES = ((256, 5e-4), (512, 1e-4), (None, 3e-5))


def learning_rate(train, width: int) -> float:
  """`train.learning_rate`, or the default of encoders `width` wide."""
  if train.learning_rate is not None:
    return train.learning_rate
  return next(rate for most, rate in LEARNING_RATES if most is None or width <= most)


def _schedule(config, train_size: int,
              width: int) -> tuple[Schedule, ml_collections.ConfigDict]:
  """The loop's schedule, and the `train` section with `steps` and
  `warmup_steps` resolved from epochs and the training set's size, and the
  learning rate from the encoder's `width` when it is None."""
  train = config.train
  total = train.steps or max(1, round(train.epochs * train_size / train.batch_size))
  resolved = ml_collections.ConfigDict(train.to_dict())
  resolved.steps, resolved.warmup_steps = total, int(train.warmup_fraction * total)
  resolved.learning_rate = learning_rate(train, width)
  eval_every = train.eval_every or math.ceil(train_size / train.batch_size)
  schedule = Schedule(total, train.log_every, eval_every,
                      train.checkpoint_every or eval_every, eval_at_start=True,
                      profile_steps=scaffold.profile_steps(train))
  return schedule, resolved


def _job(config, mesh, task, start: init_sources.Start, encoded, best: BestCheckpoint):
  """(the job, the scorers of the evaluated splits)."""
  train_arrays = encoded["train"].arrays
  schedule, resolved = _schedule(config, len(encoded["train"]), start.config.hidden_size)
  if config.train.learning_rate is None and scaffold.is_lead():
    print(f"learning rate {resolved.learning_rate:g} (the default for encoders "
          f"{start.config.hidden_size} wide)", flush=True)
  tx = optimizer.create_optimizer(resolved)
  model = architectures.classification_model(start.config, task.num_labels)
  init = classification.init_params(model, {k: v[:1] for k, v in train_arrays.items()})
  state, shardings = steps.create_train_state(init, tx, mesh, jax.random.key(config.seed))
  if start.params is not None:
    state = init_sources.with_params(state, shardings, start.params)
  eval_step = steps.jit_eval_step(classification.make_eval_step(model), shardings.params,
                                  mesh)
  buckets, rows = length_buckets(config.task), packed_length(config.task)
  scorers = {name: _Scorer(eval_step, task.metrics, device_batches(
      encoded[name].arrays, config.train.eval_batch_size, mesh, buckets, rows),
                           encoded[name].arrays["labels"])
             for name in ("validation", "test") if name in encoded}
  packing = rows and Packing(rows, config.train.grad_accum_steps, parallel.batch_shards(mesh))

  def evaluate(state, step: int) -> dict:
    scores = scorers["validation"](state.params, "eval")
    best.offer(step, state.params, scores)
    return scores

  length = config.task.max_seq_length
  job = scaffold.Job(
      name="finetune", config=config, mesh=mesh, state=state, shardings=shardings,
      train_step=steps.jit_train_step(classification.make_train_step(
          model, tx, config.train.grad_accum_steps,
          optimizer.learning_rate_schedule(resolved)), shardings, mesh),
      train_data=examples_dataset(train_arrays, config.train.batch_size, config.seed,
                                  **parallel.process_share(), buckets=buckets,
                                  group_window=config.task.group_by_length,
                                  packing=packing or None),
      evaluate=evaluate, schedule=schedule,
      throughput=Throughput(flops_per_token(start.config, length, 0),
                            peak_flops_per_device(config.train.cpu_peak_tflops)),
      files={**start.tokenizer.files,
             "task.json": json.dumps(task.to_json(), indent=2) + "\n",
             "model.json": json.dumps(architectures.to_dict(start.config), indent=2) + "\n"},
      must_match=_MUST_MATCH, progress_keys=("loss", "accuracy"),
      num_threads=config.task.num_threads)
  return job, scorers


def _final_scores(task, splits, scorers, best: BestCheckpoint, params) -> dict:
  """Validation and test scores of the best checkpoint, next to the majority
  class's and a TF-IDF baseline's."""
  summary = {"best_step": best.step}
  train = splits["train"]
  scored = {prefix: (splits[name].texts, splits[name].labels)
            for name, prefix in (("validation", "eval"), ("test", "test")) if name in scorers}
  for prefix, (_, labels) in scored.items():
    summary.update(scorers["validation" if prefix == "eval" else "test"](params, prefix))
    if not task.is_regression:
      summary.update(classification.majority(task.metrics, task.num_labels, train.labels,
                                              labels, prefix))
  summary.update(baselines.tfidf(task.metrics, task.num_labels, train.texts, train.labels,
                                 scored))
  return summary


def finetune(config, workdir: str | os.PathLike) -> dict:
  """Fine-tunes as `config` says; returns the summary (also DIR/summary.json)."""
  check_config(config)
  mesh = parallel.make_mesh(**config.mesh)
  task = tasks.resolve_task(config.task, config.task.data_dir or None)
  _check_task(task)
  start = init_sources.load_start(config, mesh, task.num_labels)
  splits, encoded = _encoded_splits(task, config, start)
  paths.check_writable(workdir)
  best = BestCheckpoint(paths.resolve(workdir) / "best", f"eval_{task.metrics[0]}")
  try:
    job, scorers = _job(config, mesh, task, start, encoded, best)
    with scaffold.Run(job, workdir, seed=config.seed + 1) as run:
      result = run.train()
      summary = dict(task=task.name, init=start.origin, step=result.step,
                     stopped_by=result.stopped_by, main_metric=task.metrics[0],
                     **{f"{k}_examples": len(e) for k, e in encoded.items()},
                     **{f"{k}_truncated": e.truncated for k, e in encoded.items()})
      if not result.stopped_by:
        params = best.params(steps.abstract_like(result.state.params,
                                                 job.shardings.params))
        summary.update(_final_scores(task, splits, scorers, best, params))
        if "eval_majority_accuracy" in summary and "eval_accuracy" in summary:
          summary["at_majority_class"] = bool(
              summary["eval_accuracy"] <= summary["eval_majority_accuracy"] + 1e-9)
        run.log(result.step, {k: v for k, v in summary.items() if k.startswith("test_")})
      summary = {k: round(v, 5) if isinstance(v, float) else v for k, v in summary.items()}
      run.write_summary(summary)
  finally:
    best.close()
  return summary
