"""What every run shares: its workdir's files, checkpoints with restore and
the resume check, the metric writer, the loop's lifetime and the summary.

A run kind (lmjax.runs.pretraining, lmjax.runs.finetuning) builds a `Job`,
its objective plugged in: the model's state and jitted step, the batches,
the evaluation and the files that describe it. `Run(job, workdir, seed)`
does the rest the same way for every kind:

  DIR/config.json, tokenizer.model, ...   written by process 0 on a fresh start
  DIR/checkpoints/<step>/                 state + loader position + config
  DIR/metrics.jsonl, DIR/tensorboard/     one line per logged step (a bucket: metrics/*.jsonl)
  DIR/profile/                            a jax.profiler trace, when asked for
  DIR/summary.json                        the run's final figures
"""

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
from etils import epath

from lmjax import parallel, paths
from lmjax.config_sections import leaves, with_added_fields
from lmjax.data.loader import Loader
from lmjax.errors import (CheckpointError, ConfigError, Fault, UserError, check_fields,
                          first_line)
from lmjax.train import steps
from lmjax.trainer import watch
from lmjax.trainer.checkpoints import Checkpoints
from lmjax.trainer.loop import Hooks, LoopResult, Schedule, run_loop
from lmjax.trainer.throughput import RateWindow, Throughput
from lmjax.trainer.writer import MetricWriter


@dataclasses.dataclass(frozen=True)
class Job:
  """One run's objective, plugged into the scaffold."""
  name: str  # shown on the progress bar
  config: Any  # the whole ml_collections config, saved with every checkpoint
  mesh: jax.sharding.Mesh
  state: steps.TrainState  # the fresh state, before any resume
  shardings: Any  # of the state
  train_step: Callable  # jitted `train_step(state, batch, rng)`
  train_data: grain.MapDataset  # this process's share of global batch k at [k]
  evaluate: Callable[[Any, int], dict]  # (state, step) -> scalars to log
  schedule: Schedule
  throughput: Throughput
  files: dict[str, bytes | str]  # name -> content, written into a fresh workdir
  must_match: tuple[str, ...]  # config fields a resumed run must share
  num_threads: int  # host threads that prepare batches
  progress_keys: tuple[str, ...] = ("loss",)


def check_resumable(saved: dict, config, keys: tuple[str, ...]) -> None:
  """Raises UserError when the config a checkpoint was saved with differs
  from `config` on one of `keys` (dotted paths)."""
  now = json.loads(config.to_json())
  for key in keys:
    a, b = saved, now
    for part in key.split("."):
      a, b = (a or {}).get(part), (b or {}).get(part)
    if a != b:
      raise UserError(f"the workdir's checkpoint was made with another config.{key} "
                      f"({json.dumps(a)[:80]}, now {json.dumps(b)[:80]}); use a new "
                      "--workdir or the same config")


def changed_fields(saved: dict, config) -> list[str]:
  """'train.learning_rate: 0.002 -> 0.001' for each field the resumed run
  changes (allowed ones: the rest fail check_resumable)."""
  before, now = dict(leaves(saved)), dict(leaves(json.loads(config.to_json())))
  return [f"{k}: {json.dumps(before.get(k))} -> {json.dumps(now.get(k))}"
          for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]


def is_lead() -> bool:
  """Process 0 writes the workdir's files; every process writes checkpoints."""
  return jax.process_index() == 0


class _Damaged(Exception):
  """A checkpoint whose files are missing, truncated or unreadable."""


# Waits before each retry of a read that failed for a cause that may pass.
RETRY_DELAYS_S = (1.0, 4.0, 16.0)
_PASSING = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "Connection reset",
            "timed out", "Temporary failure", "Service Unavailable", "Too Many Requests")
_FATAL = ("PERMISSION_DENIED", "Permission denied", "RESOURCE_EXHAUSTED", "Out of memory",
          "UNAUTHENTICATED", "Forbidden")


def restore_failure(e: BaseException) -> str:
  """What a failed read of a checkpoint says about it: 'damage' (missing,
  truncated or unreadable files: set aside), 'transient' (an I/O error or
  a storage service that does not answer: retried) or 'fault' (no access,
  no memory: the checkpoint may be good, so nothing is moved)."""
  text = f"{type(e).__name__}: {e}"
  if isinstance(e, (PermissionError, MemoryError)) or any(m in text for m in _FATAL):
    return "fault"
  if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
    return "damage"  # a file missing, or a directory where a file should be
  if isinstance(e, (OSError, TimeoutError, ConnectionError)) or any(
      m in text for m in _PASSING):
    return "transient"
  return "damage"


def _read(step: int, read: Callable[..., Any], *args) -> Any:
  """`read(step, *args)`: the checkpoint of `step`, retried while it fails for a
  cause that may pass. Raises _Damaged (from the cause) for damage, and a
  Fault naming the cause otherwise."""
  for attempt, delay in enumerate((*RETRY_DELAYS_S, None)):
    try:
      return read(step, *args)
    except Exception as e:  # pylint: disable=broad-exception-caught
      kind = restore_failure(e)
      if kind == "damage":
        raise _Damaged() from e
      if kind == "fault" or delay is None:
        tries = f" ({attempt + 1} tries)" if kind == "transient" else ""
        raise Fault(f"the checkpoint of step {step} could not be read{tries}: "
                    f"{first_line(e)}; nothing was moved, rerun once it can be") from None
      time.sleep(delay)
  raise AssertionError("unreachable")


def _resume(job: Job, workdir: epath.Path, ckpts: Checkpoints) -> tuple[Any, int, int]:
  """(state, step, loader position) of the newest checkpoint; or the fresh
  state at 0, and the workdir's files are written."""
  damaged = []
  for start in sorted(ckpts.all_steps(), reverse=True):
    # The config first: a model or tokenizer of another size would fail the
    # restore with shapes, not with the field that differs.
    try:
      saved = with_added_fields(_read(start, ckpts.read_json, "config"), job.config)
    except _Damaged as e:
      damaged.append((start, e.__cause__))
      continue
    check_resumable(saved, job.config, job.must_match)
    abstract = steps.abstract_like(job.state, job.shardings)
    try:
      state, loader, _ = _read(start, ckpts.restore, abstract)
    except _Damaged as e:
      damaged.append((start, e.__cause__))
      continue
    changes = changed_fields(saved, job.config)
    if changes and is_lead():
      print(f"resuming with a changed config: {'; '.join(changes)}", flush=True)
    for step, e in damaged:  # set aside, never deleted: named, for a look
      aside = ckpts.set_aside(step) if is_lead() else f"step {step}"
      print(f"the checkpoint of step {step} cannot be restored ({first_line(e)}); "
            f"set aside as {aside}", flush=True)
    print(f"resuming from the checkpoint of step {start} in {workdir}", flush=True)
    return state, start, loader["step"]
  if damaged:
    raise CheckpointError(f"{workdir}: no checkpoint can be restored (step "
                          f"{damaged[0][0]}: {first_line(damaged[0][1])}); move "
                          "checkpoints/ aside to start afresh")
  if is_lead():
    workdir.mkdir(parents=True, exist_ok=True)
    for name, content in {"config.json": job.config.to_json(indent=2) + "\n",
                          **job.files}.items():
      paths.write_whole(workdir / name, content)
  return job.state, 0, 0


def compile_step(job: Job, state, batch: dict, rng: jax.Array):
  """The train step compiled ahead of time for these inputs; logs the model's
  parameter count and what the compiled step needs in device memory."""
  compiled = job.train_step.lower(state, batch, rng).compile()
  params = sum(x.size for x in jax.tree.leaves(state.params))
  line = f"{job.name}: {params:,} parameters"
  memory = compiled.memory_analysis()
  if memory is not None:
    sizes = dict(arguments=memory.argument_size_in_bytes, outputs=memory.output_size_in_bytes,
                 temporaries=memory.temp_size_in_bytes, code=memory.generated_code_size_in_bytes)
    line += "; compiled step per device: " + ", ".join(
        f"{k} {v / 2**20:,.1f} MiB" for k, v in sizes.items())
  if is_lead():
    print(line, flush=True)
  return _CompiledByShape(job.train_step, {_shapes(batch): compiled})


def _shapes(batch: dict) -> tuple:
  return tuple(sorted((k, v.shape) for k, v in batch.items()))


class _CompiledByShape:
  """The train step compiled ahead of time once for each batch shape it
  meets (length buckets and packed rows make a few), each compilation a
  phase of its own for the stall watch."""

  def __init__(self, train_step, compiled: dict):
    self._train_step, self._compiled = train_step, compiled

  def __call__(self, state, batch: dict, rng):
    shapes = _shapes(batch)
    if shapes not in self._compiled:
      watch.phase(f"the compilation of the training step for batches of "
                  f"{batch['input_ids'].shape[0]} rows", compiles=True)
      self._compiled[shapes] = self._train_step.lower(state, batch, rng).compile()
    return self._compiled[shapes](state, batch, rng)


# How long a process of several may stay in one phase of the loop (a step, an
# evaluation, a save) before every process stops (lmjax.trainer.watch).
STALL_TIMEOUT_S = 1800.0


class Run:
  """A job running in a workdir; a context manager that owns the run's
  checkpoints and metric writer and closes them however the run ends.

    with Run(job, workdir, seed) as run:
      result = run.train()
      run.log(result.step, final_scores)
      run.write_summary(summary)
  """

  def __init__(self, job: Job, workdir: paths.PathLike, seed: int):
    self.job, self.workdir, self._seed = job, paths.resolve(workdir), seed
    self._ckpts: Checkpoints | None = None
    self._writer: MetricWriter | None = None

  def __enter__(self) -> "Run":
    paths.check_writable(self.workdir)
    if is_lead():
      MetricWriter.check(self.workdir)
    self._ckpts = Checkpoints(self.workdir / "checkpoints",
                              keep=self.job.config.train.keep_checkpoints)
    return self

  def __exit__(self, *exc) -> None:
    self._ckpts.close()
    if self._writer is not None:
      self._writer.close()

  def train(self) -> LoopResult:
    """Resumes from the newest checkpoint or starts fresh, then trains to the
    end of the schedule (see lmjax.trainer.loop). With several processes
    a stall watch (lmjax.trainer.watch) runs throughout."""
    with watch.watching(self.job.config.train.get("stall_timeout_s", STALL_TIMEOUT_S)):
      return self._train()

  def _train(self) -> LoopResult:
    job = self.job
    watch.phase("the restore of the newest checkpoint")
    state, start, position = _resume(job, self.workdir, self._ckpts)
    self._writer = MetricWriter(self.workdir, start, enabled=is_lead())
    loader = Loader(job.train_data, start=position, num_threads=job.num_threads)
    # Made by a jitted function: device_put cannot place a host value on
    # another process's devices.
    rng = jax.jit(lambda: jax.random.key(self._seed),
                  out_shardings=parallel.replicated(job.mesh))()
    train_step = job.train_step  # a finished run takes no step: nothing to compile
    if start < job.schedule.steps:
      watch.phase("the compilation of the training step", compiles=True)
      first = parallel.shard_batch(job.train_data[0], job.mesh)
      train_step = compile_step(job, state, first, rng)
    config_json = json.loads(job.config.to_json())
    return run_loop(state, train_step, loader, rng=rng,
                    mesh=job.mesh, schedule=job.schedule, ckpts=self._ckpts,
                    writer=self._writer,
                    hooks=Hooks(job.evaluate, lambda: (loader.state(), config_json)),
                    rate=RateWindow(job.throughput), start=start, desc=job.name,
                    progress_keys=job.progress_keys,
                    profile_dir=self.workdir / "profile")

  def log(self, step: int, scalars: dict) -> None:
    """Appends scalars to the run's metrics (after `train`)."""
    self._writer.write(step, scalars)

  def write_summary(self, summary: dict) -> None:
    """DIR/summary.json, by process 0."""
    if is_lead():
      paths.write_whole(self.workdir / "summary.json", json.dumps(summary, indent=2) + "\n")


def profile_steps(train) -> tuple[int, int] | None:
  """`train.profile_steps` ('START,END', steps counted from 1) as a pair."""
  value = str(train.profile_steps).strip()
  if not value:
    return None
  try:
    first, last = (int(v) for v in value.split(","))
  except ValueError:
    first = last = 0
  if not 1 <= first <= last:
    raise ConfigError(f"config.train.profile_steps must be START,END with "
                      f"1 <= START <= END, got {value!r}")
  return first, last


def check_train_fields(train) -> None:
  """Raises ConfigError naming the first impossible field of the `train`
  section that every run kind has."""
  check_fields("config.train", train, [
      *((f, train[f] >= 1, "at least 1") for f in ("batch_size", "log_every",
                                                  "keep_checkpoints")),
      ("stall_timeout_s", train.get("stall_timeout_s", STALL_TIMEOUT_S) > 0, "positive")])
  profile_steps(train)
