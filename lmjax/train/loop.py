"""The one training loop: steps, evaluation, checkpoints, metrics, progress.

Starting in a workdir that holds a checkpoint resumes from it, exactly: the
train state, the loader position and the dropout keys (folded with the step)
are all restored, so the resumed run repeats the uninterrupted one bit for bit.
SIGTERM or SIGINT saves a checkpoint at the current step and returns.
"""

import json
import os
import signal
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from lmjax import parallel
from lmjax.data.loader import Loader, pretraining_input
from lmjax.data.sources import MissingSplitError
from lmjax.errors import ConfigError, UserError, check_fields
from lmjax.model import BertConfig, BertForPreTraining, flops_per_token
from lmjax.train import checkpoint, optimizer, steps
from lmjax.train.metrics import MetricWriter, peak_flops_per_device

# Config fields a resumed run must share with the run that wrote the checkpoint:
# those that shape the model or the stream of batches.
_MUST_MATCH = ("seed", "model", "train.batch_size", "train.grad_accum_steps",
               "data.source", "data.text_field", "data.tokenizer", "data.max_seq_length",
               "data.max_predictions_per_seq", "data.masked_lm_prob",
               "data.short_seq_prob", "data.whole_word_masking")


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


def model_config(model, vocab_size: int) -> BertConfig:
  """The BertConfig of a config's `model` section."""
  fields = {k: v for k, v in model.to_dict().items() if k != "size"}
  return BertConfig.named(model.size, vocab_size=vocab_size, **fields)


class _StopRequest:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _check_resumable(saved: dict, config) -> None:
  now = json.loads(config.to_json())
  for key in _MUST_MATCH:
    a, b = saved, now
    for part in key.split("."):
      a, b = a.get(part), b.get(part)
    if a != b:
      raise UserError(f"the workdir's checkpoint was made with another config.{key} "
                      f"({json.dumps(a)[:80]}, now {json.dumps(b)[:80]}); use a new "
                      "--workdir or the same config")


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
    _check_resumable(saved, config)
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
  pending: list = []
  last_eval: dict = {}
  window = [time.perf_counter(), None]  # time and step where the rate window began
  bar = tqdm(total=train.steps, initial=start, disable=not lead, unit="step",
             dynamic_ncols=True, desc="pretrain")

  def flush(step: int) -> None:
    if not pending:
      return
    fetched = jax.device_get(pending)
    pending.clear()
    for s, m in fetched:
      if not np.isfinite(m["loss"]):
        # The loss of step s comes from the state after s - 1 updates, so a
        # checkpoint of step s - 1 holds a state known to be bad.
        ckpts.wait()
        if s - 1 in ckpts.all_steps():
          ckpts.delete(s - 1)
        raise TrainingDiverged(f"loss is {m['loss']} at step {s}; stopped, the last "
                               f"good checkpoint is step {ckpts.latest_step() or 'none'}")
    now = time.perf_counter()
    extra = {}
    if window[1] is not None:  # the first step's window holds compilation
      rate = (step - window[1]) * tokens_per_step / max(now - window[0], 1e-9)
      extra = dict(tokens_per_s=round(rate, 1),
                   mfu=round(rate * flops / (peak * jax.device_count()), 5) if peak else None)
    window[:] = [now, step]
    for s, m in fetched:
      writer.write(s, {**{k: float(v) for k, v in m.items()}, **(extra if s == step else {})})
    last = fetched[-1][1]
    bar.set_postfix(loss=f"{float(last['loss']):.3f}",
                    mlm_acc=f"{float(last['mlm_accuracy']):.3f}",
                    tok_s=f"{extra.get('tokens_per_s', 0):,.0f}", refresh=False)

  with _StopRequest() as stop:
    try:
      step, stopping = start, None
      while step < train.steps:
        batch = parallel.shard_batch(next(loader), mesh)
        state, metrics = train_step(state, batch, rng)
        step += 1
        pending.append((step, metrics))
        bar.update(1)
        if step == start + 1:  # leave compilation out of the first rate
          flush(step)
        # Read once: a signal may land at any moment. Several processes agree
        # on the step through JAX's preemption sync point instead.
        stopping = (stop.signal if jax.process_count() == 1 else
                    "SIGTERM" if ckpts.reached_preemption(step) else None)
        saving = step == train.steps or stopping or step % train.checkpoint_every == 0
        if saving or step % train.log_every == 0:
          flush(step)
        if step % train.eval_every == 0 or step == train.steps:
          last_eval = _evaluate(eval_step, state, eval_batches)
          writer.write(step, last_eval)
        if saving:
          ckpts.save(step, state, loader.state(), json.loads(config.to_json()))
        if stopping:
          print(f"\n{stopping}: saved a checkpoint at step {step}; exiting", flush=True)
          break
    finally:
      bar.close()
      ckpts.wait()
      ckpts.close()
      writer.flush()
      writer.close()

  if not last_eval and not stopping:  # the workdir held a finished run
    last_eval = _evaluate(eval_step, state, eval_batches)
  summary = dict(step=step, stopped_by=stopping, **_data_summary(data_info),
                 **{k: round(float(v), 5) for k, v in last_eval.items()}, **baselines)
  if lead:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def _data_summary(info: dict) -> dict:
  return {f"train_{k}": info[k] for k in ("documents", "tokens", "pairs")}
