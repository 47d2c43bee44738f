"""Training within a wall-clock budget (`config.train.budget_minutes`), as
Cramming (Geiping and Goldstein, 2022) does: the steps the budget affords
are measured once, at the start of a fresh run, and become the run's
`train.steps`, so that its schedule (warm-up, decay) spans the budget.

The budget counts the training: the step's compilations, the measurement
itself, the steps and the evaluations (every `eval_every` steps and at the
end); not the data's preparation before it, nor checkpoint saves, which run
in the background. Packed batches come in several shapes, each compiled
once: the run is charged a compilation for each shape the measured batches
took (more may come later; a long run's row counts settle on a few).

The count is recorded in the workdir's config, so a resumed run finishes
the very schedule it started (and resumes bit for bit) however long it was
stopped.
"""

import dataclasses
import json
import time

import jax
import numpy as np

from lmjax import parallel, paths
from lmjax.data.loader import Loader
from lmjax.errors import UserError

# Steps the measurement runs before it times any (the first compiles, and
# so may a new shape), then steps timed back to back, as the training loop
# runs them; a timed stretch in which a new shape compiles is run again,
# up to TRIES times.
WARM_STEPS, TIMED_STEPS, TRIES = 3, 10, 3


@dataclasses.dataclass(frozen=True)
class Timing:
  """What a run's pieces cost, in seconds."""
  compile_s: float  # the training step's compilation
  step_s: float  # a training step, dispatched as the loop dispatches it
  first_eval_s: float  # the first evaluation, its compilation included
  eval_s: float  # an evaluation after it
  shapes: int = 1  # the batch shapes the measured steps took: each compiles

  def cost(self, steps: int, eval_every: int) -> float:
    """The seconds a run of `steps` spends: the compilations, the steps,
    and an evaluation every `eval_every` steps and at the end."""
    evaluations = -(-steps // eval_every)
    return (self.shapes * self.compile_s + self.first_eval_s - self.eval_s
            + steps * self.step_s + evaluations * self.eval_s)


def affordable_steps(seconds: float, timing: Timing, eval_every: int) -> int:
  """The most steps whose run costs at most `seconds` (0 when none fits)."""
  per_step = timing.step_s + timing.eval_s / eval_every
  steps = max(0, int((seconds - timing.cost(0, eval_every)) / per_step) + 1)
  while steps > 0 and timing.cost(steps, eval_every) > seconds:
    steps -= 1
  return steps


def measure(job, seed: int) -> Timing:
  """Times `job`'s compilation, steps and evaluation on its fresh state
  (which the donated steps consume: build the job again to run it). Steps
  are timed as the loop runs them: the next batch taken from the loader and
  put on the devices, and the step dispatched while the previous one
  computes."""
  rng = jax.jit(lambda: jax.random.key(seed), out_shardings=parallel.replicated(job.mesh))()
  loader = Loader(job.train_data, num_threads=job.num_threads)
  state, shapes = job.state, set()

  def run(steps: int) -> tuple[float, int]:
    """(seconds, new shapes) of `steps` steps."""
    nonlocal state
    known = len(shapes)
    start = time.perf_counter()
    for _ in range(steps):
      batch = parallel.shard_batch(next(loader), job.mesh)
      shapes.add(tuple(sorted((k, v.shape) for k, v in batch.items())))
      state, metrics = job.train_step(state, batch, rng)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start, len(shapes) - known

  first_s, _ = run(1)  # compiles
  run(WARM_STEPS)
  for _ in range(TRIES):
    seconds, new = run(TIMED_STEPS)
    if not new:
      break
  step_s = seconds / TIMED_STEPS
  evals = []
  for _ in range(2):
    start = time.perf_counter()
    jax.block_until_ready(job.evaluate(state, 0))
    evals.append(time.perf_counter() - start)
  return Timing(max(first_s - step_s, 0.0), step_s, evals[0], min(evals), len(shapes))


def recorded_steps(workdir: paths.PathLike, minutes: float) -> int | None:
  """The steps a run in `workdir` measured for this budget when it started
  (its config.json), or None for a fresh workdir; UserError for a workdir
  whose run has checkpoints under another budget."""
  workdir = paths.resolve(workdir)
  try:
    saved = json.loads((workdir / "config.json").read_text())["train"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  if saved.get("budget_minutes") is not None and float(saved["budget_minutes"]) == minutes:
    return int(saved["steps"])
  if (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir()):
    raise UserError(f"the workdir's checkpoint was made with another config.train."
                    f"budget_minutes ({json.dumps(saved.get('budget_minutes'))}, now "
                    f"{json.dumps(minutes)}); use a new --workdir or the same config")
  return None


def agreed(steps: int) -> int:
  """Process 0's step count, on every process (each measured its own)."""
  mine = steps if jax.process_index() == 0 else 0
  return int(parallel.sum_over_processes(np.array([mine], np.int64))[0])
