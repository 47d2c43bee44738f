"""The one training loop: steps, evaluation, checkpoints, metrics, progress,
profiling.

`run_loop` drives any objective's jitted `train_step` from a loader. Started
from a restored checkpoint, it repeats the uninterrupted run bit for bit: the
train state, the loader position and the dropout keys (folded with the step)
are all part of the checkpoint. SIGTERM or SIGINT saves a checkpoint at the
current step (with several processes, at the next log, evaluation or
checkpoint step, where all of them agree) and returns; a non-finite loss
raises TrainingDiverged. Between those steps the host makes no transfer
from the device and waits for no other process: it dispatches ahead.
"""

import contextlib
import dataclasses
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from lmjax import parallel, paths
from lmjax.errors import Fault, UserError
from lmjax.trainer import watch
from lmjax.trainer.checkpoints import Checkpoints
from lmjax.trainer.throughput import RateWindow
from lmjax.trainer.writer import MetricWriter


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the loop logs, evaluates, saves and profiles, in steps."""
  steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  eval_at_start: bool = False  # evaluate before the first update of a fresh run
  profile_steps: tuple[int, int] | None = None  # trace steps START..END

  def is_due(self, step: int, every: int) -> bool:
    return step % every == 0 or step == self.steps

  def logs(self, step: int, start: int) -> bool:
    """Whether step's metrics are fetched and written: the first step of a
    start alone, so that compilation stays out of the rates."""
    return step == start + 1 or step % self.log_every == 0

  def waits(self, step: int, start: int) -> bool:
    """Whether the host waits for the device at `step` anyway (it logs,
    evaluates or saves); between such steps it dispatches ahead."""
    return (self.logs(step, start) or self.is_due(step, self.checkpoint_every)
            or self.is_due(step, self.eval_every))


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  stopped_by: str | None  # the signal that stopped the run early, if any
  last_eval: dict


class StopRequest:
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


class _Metrics:
  """Step metrics held on device until a log step, then checked, written
  with the throughput since the last write, and shown on the progress bar."""

  def __init__(self, writer: MetricWriter, rate: RateWindow, ckpts: Checkpoints,
               bar: tqdm, progress_keys: tuple[str, ...]):
    self._writer, self._rate, self._ckpts = writer, rate, ckpts
    self._bar, self._keys = bar, progress_keys
    self._pending: list = []
    self._tokens = 0  # the token positions of the pending steps' batches
    self.healthy: int | None = None  # the newest checkpoint with a healthy evaluation

  def add(self, step: int, metrics: dict, tokens: int) -> None:
    self._pending.append((step, metrics))
    self._tokens += tokens

  def flush(self, step: int) -> None:
    if not self._pending:
      return
    fetched, self._pending = jax.device_get(self._pending), []
    for s, m in fetched:
      if not np.isfinite(m["loss"]):
        self._diverged(s, m["loss"])
    if all("real_tokens" in m for _, m in fetched):  # tokens/s counts real tokens
      self._tokens = sum(float(m.pop("real_tokens")) for _, m in fetched)
    rate, self._tokens = self._rate.read(self._tokens), 0
    for s, m in fetched:
      self._writer.write(s, {**{k: float(v) for k, v in m.items()},
                             **(rate if s == step else {})})
    last = fetched[-1][1]
    shown = {k: f"{float(last[k]):.3f}" for k in self._keys if k in last}
    if "tokens_per_s" in rate:  # none yet at the first log step: its window opens there
      shown["tok_s"] = f"{rate['tokens_per_s']:,.0f}"
    self._bar.set_postfix(shown, refresh=False)

  def _diverged(self, step: int, loss: float):
    # The loss of step s comes from the state after s - 1 updates, so a
    # checkpoint of step s - 1 holds a state known to be bad.
    self._ckpts.wait()
    if step - 1 in self._ckpts.all_steps():
      self._ckpts.delete(step - 1)
    latest = self._ckpts.latest_step()
    evaluated = (f"; the last with a healthy evaluation is step {self.healthy}"
                 if self.healthy and self.healthy != latest else "")
    raise TrainingDiverged(f"loss is {loss} at step {step}; stopped, the last good "
                           f"checkpoint is step {latest or 'none'}{evaluated}")


class _Profile:
  """A jax.profiler trace of steps START..END into `directory`; a bucket's
  gets the trace once it is complete (the profiler writes local files)."""

  def __init__(self, steps: tuple[int, int] | None, directory: paths.PathLike):
    self._steps, self._directory, self._on = steps, directory, False
    self._local = None

  def before(self, step: int) -> None:
    if self._steps and step == self._steps[0]:
      self._local = (tempfile.mkdtemp(prefix="lmjax-profile-")
                     if paths.is_remote(self._directory) else os.fspath(self._directory))
      jax.profiler.start_trace(self._local, create_perfetto_trace=True)
      self._on = True

  def after(self, step: int, outputs) -> None:
    if self._on and step == self._steps[1]:
      jax.block_until_ready(outputs)
      self.stop()
      print(f"\nwrote a profile of steps {self._steps[0]}-{step} to {self._directory}",
            flush=True)

  def stop(self) -> None:
    if self._on:
      jax.profiler.stop_trace()
      self._on = False
      if self._local != os.fspath(self._directory):
        paths.copy_tree(self._local, self._directory)
        shutil.rmtree(self._local)


@dataclasses.dataclass(frozen=True)
class Hooks:
  """What the loop calls out to: `evaluate(state, step) -> scalars`, and
  `saved_items() -> (loader state, config)`, the JSON items of a checkpoint."""
  evaluate: Callable[[Any, int], dict]
  saved_items: Callable[[], tuple[dict, ...]]


def _stop_signal(stop: StopRequest, ckpts: Checkpoints, step: int,
                 agree: bool) -> str | None:
  """The signal that stops the run at this step, if any. Read once: a
  signal may land at any moment. Several processes must stop at the same
  step: JAX's preemption notice tells them all at once; a signal one got
  is shared (host to host) only where `agree`, at steps where every
  process waits for the device anyway, so that in between the host
  dispatches ahead of the device."""
  signal_name = stop.signal
  if jax.process_count() == 1:
    return signal_name
  if ckpts.reached_preemption(step):
    return signal_name or "SIGTERM"
  if not agree:
    return None
  got = parallel.sum_over_processes(np.array([signal_name is not None], np.int32))
  return (signal_name or "SIGTERM") if got[0] else None


def _log_evaluation(writer: MetricWriter, bar: tqdm, step: int, scores: dict) -> None:
  """An evaluation into the metrics and, on process 0, a line on the console."""
  writer.write(step, scores)
  if jax.process_index() == 0:
    bar.write(f"evaluation at step {step}: " + ", ".join(
        f"{k.removeprefix('eval_')} {float(v):.4f}" for k, v in scores.items()
        if isinstance(v, (int, float, np.floating))))


def _evaluate(hooks: Hooks, state, step: int, saving: bool, writer: MetricWriter, bar: tqdm,
              metrics: _Metrics, ckpts: Checkpoints) -> dict:
  """Evaluates and logs `state`; a healthy evaluation protects its
  checkpoint (the one this step saves, or the newest before it) from the
  rotation of this save."""
  watch.phase(f"evaluation at step {step}")
  scores = hooks.evaluate(state, step)
  _log_evaluation(writer, bar, step, scores)
  if all(np.isfinite(float(v)) for v in scores.values()
         if isinstance(v, (int, float, np.floating))):
    metrics.healthy = step if saving else ckpts.latest_step()
    if metrics.healthy:
      ckpts.protect(metrics.healthy)
  return scores


def _save_at_fault(ckpts: Checkpoints, step: int, state, hooks: Hooks) -> str:
  """Saves the state in memory when the disk still takes a checkpoint;
  says which checkpoint is the newest on disk."""
  with contextlib.suppress(Fault):
    ckpts.wait()
  if step not in ckpts.all_steps():
    try:
      ckpts.save(step, state, *hooks.saved_items())
      ckpts.wait()
    except Exception:  # pylint: disable=broad-exception-caught  # the disk refused it too
      pass
  return _newest(ckpts)


def _newest(ckpts: Checkpoints) -> str:
  latest = ckpts.latest_step()
  return (f"the newest checkpoint on disk is step {latest}" if latest
          else "no checkpoint on disk")


def run_loop(state, train_step: Callable, loader, *, rng: jax.Array, mesh,
             schedule: Schedule, ckpts: Checkpoints, writer: MetricWriter, hooks: Hooks,
             rate: RateWindow, start: int = 0, desc: str = "train",
             progress_keys: tuple[str, ...] = ("loss",),
             profile_dir: paths.PathLike = "profile") -> LoopResult:
  """Trains from step `start` to `schedule.steps`; evaluates every
  `eval_every` steps and at the end, and saves every `checkpoint_every`
  steps, at the end and when stopped."""
  bar = tqdm(total=schedule.steps, initial=start, disable=jax.process_index() != 0,
             unit="step", dynamic_ncols=True, desc=desc)
  metrics, profile = _Metrics(writer, rate, ckpts, bar, progress_keys), _Profile(
      schedule.profile_steps, profile_dir)
  step, stopping, last_eval, faulted = start, None, {}, False
  if start == 0 and schedule.eval_at_start:
    watch.phase("evaluation at step 0")
    _log_evaluation(writer, bar, 0, hooks.evaluate(state, 0))
  with StopRequest() as stop:
    try:
      while step < schedule.steps:
        watch.phase(f"training step {step + 1}")
        profile.before(step + 1)
        batch = parallel.shard_batch(next(loader), mesh)
        state, step_metrics = train_step(state, batch, rng)
        step += 1
        profile.after(step, (state, step_metrics))
        metrics.add(step, step_metrics, rate.tokens(batch))
        bar.update(1)
        stopping = _stop_signal(stop, ckpts, step, schedule.waits(step, start))
        saving = stopping or schedule.is_due(step, schedule.checkpoint_every)
        if saving or schedule.logs(step, start):
          metrics.flush(step)
        if schedule.is_due(step, schedule.eval_every):
          last_eval = _evaluate(hooks, state, step, saving, writer, bar, metrics, ckpts)
        if saving:
          watch.phase(f"checkpoint save at step {step}")
          ckpts.save(step, state, *hooks.saved_items())
          writer.flush()  # a bucket gets the lines since the last save
        if stopping:
          print(f"\n{stopping}: saved a checkpoint at step {step}; exiting", flush=True)
          break
    except Fault as e:
      faulted = True
      raise Fault(f"{e}; stopped at step {step}: {_save_at_fault(ckpts, step, state, hooks)}"
                  ) from None
    finally:
      profile.stop()
      bar.close()
      if not faulted:
        watch.phase(f"checkpoint save at step {step}")
        try:
          ckpts.wait()
        except Fault as e:  # the last save failed
          raise Fault(f"{e}; stopped at step {step}: {_newest(ckpts)}") from None
        writer.flush()
  return LoopResult(state, step, stopping, last_eval)
