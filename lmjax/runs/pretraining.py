"""The pretraining run `lmjax.pretrain` starts: BertForPreTraining on a
corpus with the MLM + NSP (+ CP) objective, or ModernBertForMaskedLM with
MLM alone, on the run scaffold.

Starting in a workdir that holds a checkpoint resumes from it exactly (see
lmjax.trainer.loop).
"""

import dataclasses
import json
import os
import time

import jax
import ml_collections

from lmjax import parallel, paths
from lmjax.data.cache import learned_size
from lmjax.data.pretrain_input import RowPacking, check_data_config, pretraining_input
from lmjax.errors import ConfigError, MissingSplitError, check_fields
from lmjax.model import architectures, flops_per_token
from lmjax.runs import init_sources, probe
from lmjax.train import mlm_nsp, optimizer, steps
from lmjax.trainer import budget, scaffold, watch
from lmjax.trainer.loop import Schedule, TrainingDiverged
from lmjax.trainer.throughput import Throughput, peak_flops_per_device

__all__ = ["check_config", "train_and_evaluate", "TrainingDiverged"]

# Config fields a resumed run must share with the run that wrote the checkpoint:
# those that shape the model or the stream of batches (packing does not: a packed
# step computes what the same pairs one a row do).
_MUST_MATCH = ("seed", "model", "init.source", "train.batch_size", "train.grad_accum_steps",
               "train.budget_minutes",
               "data.source", "data.text_field", "data.tokenizer", "data.max_seq_length",
               "data.max_predictions_per_seq", "data.masked_lm_prob",
               "data.short_seq_prob", "data.whole_word_masking")


def check_config(config) -> None:
  """Raises ConfigError naming the first impossible field, before any work."""
  train = config.train
  scaffold.check_train_fields(train)
  optimizer.check_config(train)
  minutes = train.get("budget_minutes")
  check_fields("config.train", train, [
      ("budget_minutes", minutes is None or minutes > 0,
       "positive (or none: train.steps says how long the run is)"),
      ("steps", train.steps >= 1, "at least 1"),
      ("warmup_steps", train.warmup_steps >= 0, "at least 0"),
      *((f, train[f] >= 1, "at least 1") for f in ("eval_every", "eval_batches",
                                                   "checkpoint_every")),
      *((f, train[f] >= 0, "non-negative") for f in ("mlm_weight", "nsp_weight", "cp_weight")),
      ("mlm_weight", train.mlm_weight + train.nsp_weight + train.cp_weight > 0,
       "positive, or nsp_weight or cp_weight (all three are 0: nothing to learn)"),
      ("cp_temperature", train.cp_temperature > 0, "positive"),
      ("cp_weight", not train.cp_weight or train.batch_size >= 2,
       "0 with batches of one example: CP needs negatives")])
  if minutes is None:
    optimizer.check_schedule(train)
  check_data_config(config.data)
  if learned_size(config.data.tokenizer) and config.init.source != "random":
    raise ConfigError(f"config.data.tokenizer={config.data.tokenizer} learns a new "
                      f"vocabulary, but config.init.source={config.init.source} brings "
                      "its own; leave config.data.tokenizer empty")
  architectures.check_section(config.model)
  check_objectives(config.model.architecture, train)
  if config.data.max_seq_length > config.model.max_position:
    raise ConfigError(f"config.data.max_seq_length ({config.data.max_seq_length}) "
                      f"exceeds config.model.max_position ({config.model.max_position})")


def check_objectives(architecture: str, train) -> None:
  """ConfigError for an objective the architecture's model has no place
  for: ModernBERT has no NSP head and no pooled output for CP to read."""
  if architecture != "modernbert":
    return
  for name, weight in (("nsp_weight", train.nsp_weight), ("cp_weight", train.cp_weight)):
    if weight:
      raise ConfigError(f"config.train.{name} must be 0 with config.model.architecture="
                        f"modernbert (its model has no NSP head and no pooled output: it "
                        f"pretrains with MLM alone); add --config.train.{name}=0")


def _inputs(config, workdir, mesh):
  """(train dataset, evaluation host batches, tokenizer, corpus sizes)."""
  batch, share = config.train.batch_size, parallel.process_share()
  data = config.data
  if data.get("packing", False):
    share["rows"] = RowPacking(config.train.grad_accum_steps, parallel.batch_shards(mesh),
                               data.get("packing_window", 1))
  learned = paths.resolve(workdir) / "tokenizer.model"
  if learned_size(data.tokenizer) and learned.is_file():
    # A run that learned its tokenizer keeps it when it resumes, even if its
    # corpus changed since.
    data = ml_collections.ConfigDict({**data.to_dict(), "tokenizer": str(learned)})
  train_data, tokenizer, info = pretraining_input(data, batch, config.seed, "train", **share)
  _check_packing(config, info)
  eval_rate = data.get("eval_masked_lm_prob")
  masked_for_eval = ml_collections.ConfigDict(
      {**data.to_dict(), "masked_lm_prob": eval_rate or data.masked_lm_prob})
  try:
    eval_data, _, _ = pretraining_input(masked_for_eval, batch, config.seed, "validation",
                                        **share)
  except MissingSplitError as e:
    print(f"{e}; evaluating on training batches instead", flush=True)
    eval_data = train_data
    if eval_rate and eval_rate != data.masked_lm_prob:
      eval_data, _, _ = pretraining_input(masked_for_eval, batch, config.seed, "train",
                                          **share)
  host_eval = [eval_data[k] for k in range(config.train.eval_batches)]
  sizes = {f"train_{k}": info[k] for k in ("documents", "tokens", "pairs")}
  return train_data, host_eval, tokenizer, sizes


def _check_packing(config, info: dict) -> None:
  """A corpus of one document has nothing to pack with NSP on: its pairs
  are as long as the rows, and their random next segments come from that
  same document."""
  if config.data.get("packing", False) and config.train.nsp_weight and info["documents"] == 1:
    raise ConfigError(f"{config.data.source} is one document: with NSP on it has nothing "
                      "to pack (its pairs fill their rows, and random next segments come "
                      "from the same document); set --config.data.packing=false, or "
                      "--config.train.nsp_weight=0, or give the corpus its document "
                      "boundaries (a blank line between documents)")


def _job(config, mesh, model_cfg, train_data, host_eval, tokenizer,
         probe_task=None) -> scaffold.Job:
  train, data = config.train, config.data
  model = architectures.pretraining_model(model_cfg)
  tx = optimizer.create_optimizer(train)
  init = mlm_nsp.init_params(model, {k: v[:1] for k, v in train_data[0].items()})
  state, shardings = steps.create_train_state(init, tx, mesh, jax.random.key(config.seed))
  weights = mlm_nsp.LossWeights(train.mlm_weight, train.nsp_weight, train.cp_weight,
                                train.cp_temperature)
  train_step = steps.jit_train_step(
      mlm_nsp.make_train_step(model, tx, weights, train.grad_accum_steps,
                              optimizer.learning_rate_schedule(train)),
      shardings, mesh)
  eval_step = steps.jit_eval_step(mlm_nsp.make_eval_step(model, weights), shardings.params,
                                  mesh)
  eval_batches = [parallel.shard_batch(b, mesh) for b in host_eval]
  linear_probe = probe.Probe(probe_task, config.probe, model, tokenizer, data.max_seq_length,
                             shardings.params, mesh,
                             packed=data.get("packing", False)) if probe_task else None

  def evaluate(state, step):
    scores = mlm_nsp.evaluate(eval_step, state.params, eval_batches)
    if not linear_probe:
      return scores
    watch.phase(f"linear probe at step {step}")
    return {**scores, **linear_probe(state.params)}

  flops = flops_per_token(model_cfg, data.max_seq_length, data.max_predictions_per_seq)
  if train.cp_weight:  # CP encodes each segment again, at the pair's length
    flops += 2 * flops_per_token(model_cfg, data.max_seq_length, 0)
  return scaffold.Job(
      name="pretrain", config=config, mesh=mesh, state=state, shardings=shardings,
      train_step=train_step, train_data=train_data,
      evaluate=evaluate,
      schedule=Schedule(train.steps, train.log_every, train.eval_every,
                        train.checkpoint_every,
                        profile_steps=scaffold.profile_steps(train)),
      throughput=Throughput(flops, peak_flops_per_device(train.cpu_peak_tflops)),
      files={**tokenizer.files,
             "model.json": json.dumps(architectures.to_dict(model_cfg), indent=2) + "\n"},
      must_match=_MUST_MATCH,
      progress_keys=("loss", "mlm_accuracy"), num_threads=data.num_threads)


def _start(config) -> tuple[object, architectures.ModelConfig | None, dict | None]:
  """(config, model config, weights) of `config.init.source`: for hf:DIR
  its sizes and weights, and its tokenizer unless config.data.tokenizer
  names one (which must be the same); (config, None, None) for random."""
  kind, path = init_sources.parse_source(config.init.source)
  if kind == "random":
    return config, None, None
  if kind != "hf":
    raise ConfigError(f"config.init.source must be random or hf:DIR for pretraining, got "
                      f"{config.init.source!r} (a pretraining workdir resumes by running "
                      "again with the same --workdir)")
  model_cfg, params, _ = init_sources.load_hf_pretraining(path, config)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.tokenizer = str(path)  # the data is tokenized with the directory's own
  if config.data.max_seq_length > model_cfg.max_position:
    raise ConfigError(f"config.data.max_seq_length ({config.data.max_seq_length}) exceeds "
                      f"the max_position_embeddings of {path} ({model_cfg.max_position})")
  return config, model_cfg, params


@dataclasses.dataclass(frozen=True)
class _Budget:
  """What a budget afforded when its run started (DIR/budget.json)."""
  minutes: float
  steps: int
  timing: budget.Timing
  clock: float  # time.perf_counter() when the measurement began


def _within_budget(config, workdir, job_of) -> tuple[object, _Budget | None]:
  """`config` with `train.steps` the budget affords (the recorded count
  when the workdir's run started with this budget) and, for a fresh
  start, what was measured; ConfigError when it leaves no room for the
  warm-up."""
  minutes = config.train.get("budget_minutes")
  if minutes is None:
    return config, None
  spent, steps = None, budget.recorded_steps(workdir, minutes)
  if steps is None:
    clock = time.perf_counter()
    watch.phase("the measurement of the budget's steps", compiles=True)
    timing = budget.measure(job_of(config), config.seed + 1)
    left = minutes * 60 - (time.perf_counter() - clock)
    steps = budget.agreed(budget.affordable_steps(left, timing, config.train.eval_every))
    spent = _Budget(minutes, steps, timing, clock)
    if scaffold.is_lead():
      print(f"the budget of {minutes:g} min affords {steps} steps ({timing.step_s:.3f} s a "
            f"step, {timing.eval_s:.1f} s an evaluation every {config.train.eval_every} "
            f"steps, {timing.compile_s:.1f} s to compile each of {timing.shapes} batch "
            "shapes)", flush=True)
  config = ml_collections.ConfigDict(config.to_dict())
  config.train.steps = steps
  if steps < 1:
    raise ConfigError(f"config.train.budget_minutes={minutes:g} affords no training step "
                      f"(compiling, one evaluation and a step take longer); raise it")
  optimizer.check_schedule(config.train, f"config.train.budget_minutes={minutes:g}")
  return config, spent


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict:
  """Pretrains as `config` says; returns the summary (also
  DIR/summary.json)."""
  check_config(config)
  probe_task = probe.resolve(config.probe)
  config, model_cfg, params = _start(config)
  mesh = parallel.make_mesh(**config.mesh)
  train_data, host_eval, tokenizer, sizes = _inputs(config, workdir, mesh)
  model_cfg = model_cfg or architectures.from_section(config.model,
                                                      vocab_size=tokenizer.vocab_size)

  def job_of(config):
    return _job(config, mesh, model_cfg, train_data, host_eval, tokenizer, probe_task)

  config, spent = _within_budget(config, workdir, job_of)
  job = job_of(config)
  if spent is not None:
    measured = dict(minutes=spent.minutes, steps=spent.steps,
                    **{k: round(v, 4) for k, v in dataclasses.asdict(spent.timing).items()})
    job = dataclasses.replace(job, files={**job.files,
                                          "budget.json": json.dumps(measured, indent=2) + "\n"})
  if params is not None:
    job = dataclasses.replace(job, state=init_sources.with_params(job.state, job.shardings, params))
  with scaffold.Run(job, workdir, seed=config.seed + 1) as run:
    result = run.train()
    used = {}
    if spent is not None and not result.stopped_by:  # measured and run in one go
      used = dict(budget_minutes_used=round((time.perf_counter() - spent.clock) / 60, 2))
    last_eval = result.last_eval
    if not last_eval and not result.stopped_by:  # the workdir held a finished run
      last_eval = job.evaluate(result.state, result.step)
    baselines = mlm_nsp.baselines(parallel.sum_over_processes(
        mlm_nsp.target_counts(host_eval, tokenizer.vocab_size)))
    if "nsp" not in architectures.objectives(model_cfg):
      baselines.pop("baseline_nsp_accuracy")
    summary = dict(step=result.step, stopped_by=result.stopped_by, **sizes, **used,
                   **{k: round(float(v), 5) for k, v in last_eval.items()}, **baselines)
    run.write_summary(summary)
  return summary
