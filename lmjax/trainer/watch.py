"""A watch on a run's progress: a process of several that stays in one
phase (a training step, an evaluation, a checkpoint save, the linear probe)
for longer than `config.train.stall_timeout_s` ends with one line naming
the phase, and so does every other process of the run. A phase that
compiles the training step (its first shape, and each new row count of
packed batches) has at least `COMPILE_ALLOWANCE_S`: a compilation is work,
not a stall, and takes longer on a busy host than a short timeout allows.

Whatever holds a run up (a collective one process never joins, a bucket
that stops answering, a data loader that never returns), every process
stops waiting, and the next run resumes from the newest checkpoint. The
first evaluation compiles too, within the timeout. The run's code marks phases with `phase(name)`, a
no-op where no watch runs (one process, or outside the training loop).
"""

import contextlib
import threading
import time

import jax

from lmjax import distributed

_current: "StallWatch | None" = None
COMPILE_ALLOWANCE_S = 600.0


class StallWatch:
  """A thread that ends this process (and, through lmjax.distributed, the
  others) when no new phase starts within `timeout_s` of the last."""

  def __init__(self, timeout_s: float):
    self.timeout_s = timeout_s
    self._phase, self._since, self._limit = "start-up", time.monotonic(), timeout_s
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="lmjax-stall-watch",
                                    daemon=True)

  def enter(self, name: str, compiles: bool = False) -> None:
    limit = max(self.timeout_s, COMPILE_ALLOWANCE_S) if compiles else self.timeout_s
    self._phase, self._since, self._limit = name, time.monotonic(), limit

  def _watch(self) -> None:
    interval = min(1.0, self.timeout_s / 10)
    while not self._done.wait(interval):
      phase, since, limit = self._phase, self._since, self._limit
      if time.monotonic() - since > limit:
        distributed.stop_all(
            f"{phase} made no progress for {limit:g} s on process "
            f"{jax.process_index()} (config.train.stall_timeout_s)")

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    self._done.set()
    self._thread.join()


@contextlib.contextmanager
def watching(timeout_s: float):
  """Within it, a stall watch runs when this is one process of several."""
  global _current  # pylint: disable=global-statement
  if jax.process_count() == 1 or _current is not None:
    yield
    return
  _current = StallWatch(timeout_s)
  _current.start()
  try:
    yield
  finally:
    _current.stop()
    _current = None


def phase(name: str, compiles: bool = False) -> None:
  """Marks the start of phase `name` ('training step 12', say); one that
  `compiles` the training step has COMPILE_ALLOWANCE_S at least."""
  if _current is not None:
    _current.enter(name, compiles)
