"""The one training loop: steps, evaluation, checkpoints, metrics, progress.

`run_loop` drives any objective's jitted `train_step` from a loader. Starting
from a restored checkpoint, it repeats the uninterrupted run bit for bit: the
train state, the loader position and the dropout keys (folded with the step)
are all part of the checkpoint. SIGTERM or SIGINT saves a checkpoint at the
current step and returns; a non-finite loss raises TrainingDiverged.
"""

import dataclasses
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from lmjax import parallel
from lmjax.errors import UserError
from lmjax.model import BertConfig
from lmjax.train.checkpoint import Checkpoints
from lmjax.train.metrics import MetricWriter


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


def model_config(model, vocab_size: int, **fields) -> BertConfig:
  """The BertConfig of a config's `model` section."""
  section = {k: v for k, v in model.to_dict().items() if k != "size"}
  return BertConfig.named(model.size, vocab_size=vocab_size, **{**section, **fields})


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


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the loop logs, evaluates and saves, in steps."""
  steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int


@dataclasses.dataclass(frozen=True)
class Throughput:
  """What turns steps per second into tokens/s and MFU."""
  tokens_per_step: int
  flops_per_token: float
  peak_flops_per_device: float | None


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int
  stopped_by: str | None  # the signal that stopped the run early, if any
  last_eval: dict


def run_loop(state, train_step: Callable, loader, *, rng: jax.Array, mesh,
             schedule: Schedule, ckpts: Checkpoints, writer: MetricWriter,
             evaluate: Callable[[Any, int], dict], config_json: dict,
             throughput: Throughput, start: int = 0, desc: str = "train",
             progress_keys: tuple[str, ...] = ("loss",)) -> LoopResult:
  """Trains from step `start` to `schedule.steps`.

  `evaluate(state, step)` runs every `eval_every` steps and at the end; it
  returns the scalars to log (and may keep its own record, e.g. the best
  checkpoint). Checkpoints hold (state, loader state, config_json).
  """
  pending: list = []
  last_eval: dict = {}
  window = [time.perf_counter(), None]  # time and step where the rate window began
  lead = jax.process_index() == 0
  bar = tqdm(total=schedule.steps, initial=start, disable=not lead, unit="step",
             dynamic_ncols=True, desc=desc)

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
      rate = (step - window[1]) * throughput.tokens_per_step / max(now - window[0], 1e-9)
      peak = throughput.peak_flops_per_device
      extra = dict(tokens_per_s=round(rate, 1),
                   mfu=(round(rate * throughput.flops_per_token / (peak * jax.device_count()),
                              5) if peak else None))
    window[:] = [now, step]
    for s, m in fetched:
      writer.write(s, {**{k: float(v) for k, v in m.items()}, **(extra if s == step else {})})
    last = fetched[-1][1]
    bar.set_postfix({**{k: f"{float(last[k]):.3f}" for k in progress_keys if k in last},
                     "tok_s": f"{extra.get('tokens_per_s', 0):,.0f}"}, refresh=False)

  step, stopping = start, None
  with StopRequest() as stop:
    try:
      while step < schedule.steps:
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
        last_step = step == schedule.steps
        saving = last_step or stopping or step % schedule.checkpoint_every == 0
        if saving or step % schedule.log_every == 0:
          flush(step)
        if step % schedule.eval_every == 0 or last_step:
          last_eval = evaluate(state, step)
          writer.write(step, last_eval)
        if saving:
          ckpts.save(step, state, loader.state(), config_json)
        if stopping:
          print(f"\n{stopping}: saved a checkpoint at step {step}; exiting", flush=True)
          break
    finally:
      bar.close()
      ckpts.wait()
      writer.flush()
  return LoopResult(state, step, stopping, last_eval)
