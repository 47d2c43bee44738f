"""Pretraining BertForPreTraining (MLM + NSP): the run `lmjax.pretrain` starts.

Starting in a workdir that holds a checkpoint resumes from it exactly (see
lmjax.train.loop).
"""

import json
import os
from pathlib import Path

import jax
import numpy as np

from lmjax import parallel
from lmjax.data.loader import Loader, pretraining_input
from lmjax.data.sources import MissingSplitError
from lmjax.errors import ConfigError, check_fields
from lmjax.model import BertForPreTraining, flops_per_token
from lmjax.train import checkpoint, optimizer, steps
from lmjax.train.loop import (Schedule, Throughput, TrainingDiverged, check_resumable,
                              model_config, run_loop)
from lmjax.train.metrics import MetricWriter, peak_flops_per_device

__all__ = ["train_and_evaluate", "TrainingDiverged"]

# Config fields a resumed run must share with the run that wrote the checkpoint:
# those that shape the model or the stream of batches.
_MUST_MATCH = ("seed", "model", "train.batch_size", "train.grad_accum_steps",
               "data.source", "data.text_field", "data.tokenizer", "data.max_seq_length",
               "data.max_predictions_per_seq", "data.masked_lm_prob",
               "data.short_seq_prob", "data.whole_word_masking")


def _evaluate(eval_step, state, batches) -> dict:
  sums = None
  for batch in batches:
    out = eval_step(state, batch)
    sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
  sums = jax.device_get(sums)
  mlm_count, nsp_count = max(sums["mlm_count"], 1.0), max(sums["nsp_count"], 1.0)
  return dict(eval_mlm_loss=sums["mlm_loss_sum"] / mlm_count,
              eval_nsp_loss=sums["nsp_loss_sum"] / nsp_count,
              eval_loss=sums["mlm_loss_sum"] / mlm_count + sums["nsp_loss_sum"] / nsp_count,
              eval_mlm_accuracy=sums["mlm_correct"] / mlm_count,
              eval_nsp_accuracy=sums["nsp_correct"] / nsp_count)


def _baselines(host_batches) -> dict:
  """Accuracy of always predicting the most frequent target token, and of
  always answering the more common NSP label, on the evaluation batches."""
  targets = np.concatenate([b["masked_ids"][b["masked_weights"] > 0] for b in host_batches])
  labels = np.concatenate([b["nsp_labels"] for b in host_batches])
  counts = np.bincount(targets)
  return dict(baseline_mlm_accuracy=float(counts.max() / len(targets)),
              baseline_nsp_accuracy=float(max(labels.mean(), 1 - labels.mean())))


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
  """Pretrains BertForPreTraining as `config` says; returns the summary."""
  workdir = Path(workdir)
  optimizer.check_train_config(config.train)
  train = config.train
  check_fields("config.train", train, [
      (f, train[f] >= 1, "at least 1") for f in ("log_every", "eval_every", "eval_batches",
                                                 "checkpoint_every", "keep_checkpoints")])
  model_config(config.model, vocab_size=8)  # fail on a bad model field before any work
  mesh = parallel.make_mesh(**config.mesh)
  process = dict(process_index=jax.process_index(), process_count=jax.process_count())
  train_data, tokenizer, data_info = pretraining_input(
      config.data, train.batch_size, config.seed, "train", **process)
  try:
    eval_data, _, _ = pretraining_input(config.data, train.batch_size, config.seed,
                                        "validation", **process)
  except MissingSplitError as e:
    print(f"{e}; evaluating on training batches instead", flush=True)
    eval_data = train_data
  model_cfg = model_config(config.model, tokenizer.vocab_size)
  if config.data.max_seq_length > model_cfg.max_position:
    raise ConfigError(f"config.data.max_seq_length ({config.data.max_seq_length}) "
                      f"exceeds config.model.max_position ({model_cfg.max_position})")
  model = BertForPreTraining(model_cfg)
  tx = optimizer.create_optimizer(train)
  example = {k: v[:1] for k, v in train_data[0].items()}
  state, shardings = steps.create_train_state(model, tx, mesh, example,
                                              jax.random.key(config.seed))
  lead = jax.process_index() == 0
  writer = MetricWriter(workdir, enabled=lead)
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", keep=train.keep_checkpoints)
  start = ckpts.latest_step() or 0
  loader_state = {"step": 0}
  if start:
    state, loader_state, saved = ckpts.restore(start, checkpoint.abstract_like(state, shardings))
    check_resumable(saved, config, _MUST_MATCH)
    print(f"resuming from the checkpoint of step {start} in {workdir}", flush=True)
  elif lead:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tokenizer.model").write_bytes(tokenizer.model_proto)
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
  writer.truncate_after(start)

  train_step = steps.jit_train_step(
      steps.make_train_step(model, tx, steps.LossWeights(train.mlm_weight, train.nsp_weight),
                            train.grad_accum_steps, optimizer.learning_rate_schedule(train)),
      shardings, mesh)
  eval_step = steps.jit_eval_step(steps.make_eval_step(model), shardings, mesh)
  host_eval = [eval_data[k] for k in range(train.eval_batches)]
  eval_batches = [parallel.shard_batch(b, mesh) for b in host_eval]
  baselines = _baselines(host_eval)
  tokens_per_step = train.batch_size * config.data.max_seq_length
  flops = flops_per_token(model_cfg, config.data.max_seq_length,
                          config.data.max_predictions_per_seq)
  peak = peak_flops_per_device(train.cpu_peak_tflops)
  rng = jax.random.key(config.seed + 1)

  loader = Loader(train_data, start=loader_state["step"], num_threads=config.data.num_threads)
  try:
    result = run_loop(
        state, train_step, loader, rng=rng, mesh=mesh,
        schedule=Schedule(train.steps, train.log_every, train.eval_every,
                          train.checkpoint_every),
        ckpts=ckpts, writer=writer, config_json=json.loads(config.to_json()),
        evaluate=lambda state, step: _evaluate(eval_step, state, eval_batches),
        throughput=Throughput(tokens_per_step, flops, peak), start=start,
        desc="pretrain", progress_keys=("loss", "mlm_accuracy"))
  finally:
    ckpts.close()
    writer.close()
  state, step, stopping, last_eval = (result.state, result.step, result.stopped_by,
                                      result.last_eval)
  if not last_eval and not stopping:  # the workdir held a finished run
    last_eval = _evaluate(eval_step, state, eval_batches)
  summary = dict(step=step, stopped_by=stopping, **_data_summary(data_info),
                 **{k: round(float(v), 5) for k, v in last_eval.items()}, **baselines)
  if lead:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def _data_summary(info: dict) -> dict:
  return {f"train_{k}": info[k] for k in ("documents", "tokens", "pairs")}
