"""A watch on a run's progress: a process of several that stays in one
phase (a training step, an evaluation, a checkpoint save, the linear probe)
for longer than `config.train.stall_timeout_s` ends with one line naming
the phase, and so does every other process of the run.

Whatever holds a run up (a collective one process never joins, a bucket
that stops answering, a data loader that never returns), every process
stops waiting, and the next run resumes from the newest checkpoint. A
phase is long enough for a compilation: the first step and the first
evaluation compile. The run's code marks phases with `phase(name)`, a
no-op where no watch runs (one process, or outside the training loop).
"""

import contextlib
import threading
import time

import jax

from lmjax import distributed

_current: "StallWatch | None" = None


class StallWatch:
  """A thread that ends this process (and, through lmjax.distributed, the
  others) when no new phase starts within `timeout_s` of the last."""

  def __init__(self, timeout_s: float):
    self.timeout_s = timeout_s
    self._phase, self._since = "start-up", time.monotonic()
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, name="lmjax-stall-watch",
                                    daemon=True)

  def enter(self, name: str) -> None:
    self._phase, self._since = name, time.monotonic()

  def _watch(self) -> None:
    interval = min(1.0, self.timeout_s / 10)
    while not self._done.wait(interval):
      phase, since = self._phase, self._since
      if time.monotonic() - since > self.timeout_s:
        distributed.stop_all(
            f"{phase} made no progress for {self.timeout_s:g} s on process "
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


def phase(name: str) -> None:
  """Marks the start of phase `name` ('training step 12', say)."""
  if _current is not None:
    _current.enter(name)
