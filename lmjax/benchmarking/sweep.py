"""Running a sweep: each point in a process of its own, so that its compile
time, device memory and host RSS are what a fresh run of that point would
see. With a peer (Hugging Face's torch BERT, lmjax.benchmarking.hf_torch)
the two processes take turns, round by round, on the same workload, so a
busy machine slows both alike.
"""

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import statistics
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from lmjax.benchmarking.points import Point, Settings, flops_per_token, peak_rss_bytes, predictions
from lmjax.benchmarking.results import append_jsonl, line, plot, write_csv
from lmjax.errors import first_line


def _serve(connection, make_worker: Callable, point: Point, settings: Settings) -> None:
  """A point's process: builds the worker (compiling its step), then runs
  timed steps on request until told to finish. Ctrl-C is the parent's to
  handle: it ends the points it started."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  connection.send(("started", None))
  try:
    worker = make_worker(point, settings)
    connection.send(("ready", worker.setup()))
    while True:
      command, count = connection.recv()
      if command == "finish":
        connection.send(("done", {**worker.finish(), "peak_rss_bytes": peak_rss_bytes()}))
        return
      connection.send(("times", worker.run(count)))
  except Exception as e:  # pylint: disable=broad-except
    message = type(e).__name__ + (f": {first_line(e, 400)}" if str(e).strip() else "")
    connection.send(("error", message, traceback.format_exc()))


class _Interrupts:
  deferring = False
  pending = False


def interrupt(signum, frame) -> None:
  """The SIGINT and SIGTERM handler of a sweep: KeyboardInterrupt, held back
  while a point's process is starting."""
  del signum, frame
  if _Interrupts.deferring:
    _Interrupts.pending = True
    return
  raise KeyboardInterrupt


@contextlib.contextmanager
def _interrupts_deferred():
  _Interrupts.deferring = True
  try:
    yield
  finally:
    _Interrupts.deferring = False
    if _Interrupts.pending:
      _Interrupts.pending = False
      raise KeyboardInterrupt


class _Process:
  """The parent's handle on one point's process."""

  def __init__(self, make_worker: Callable, point: Point, settings: Settings):
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited JAX
    self._connection, child = context.Pipe()
    self._process = context.Process(target=_serve, args=(child, make_worker, point, settings),
                                    daemon=True)
    # The child unpickles its end of the pipe from this process; an interrupt
    # before it has (this process gone) would leave it a traceback. Ctrl-C
    # waits the second that takes.
    with _interrupts_deferred():
      self._process.start()
      child.close()
      self.ask()  # "started"

  def ask(self, *message) -> Any:
    if message:
      self._connection.send(message)
    try:
      reply = self._connection.recv()
    except EOFError:
      self._process.join(5)
      raise _PointFailed("the point's process died (exit status "
                         f"{self._process.exitcode})") from None
    if reply[0] == "error":
      raise _PointFailed(reply[1], reply[2])
    return reply[1]

  def close(self, wait: float = 10) -> None:
    self._process.join(wait)
    if self._process.is_alive():
      self._process.kill()
      self._process.join()


class _PointFailed(Exception):
  """A point that could not run (out of memory, say): the sweep goes on."""

  def __init__(self, message: str, details: str = ""):
    super().__init__(message)
    self.details = details


def _lmjax_worker(point, settings):
  from lmjax.benchmarking import lmjax_step  # pylint: disable=import-outside-toplevel
  return lmjax_step.StepWorker(point, settings)


def _peer_worker(point, settings):
  from lmjax.benchmarking import hf_torch  # pylint: disable=import-outside-toplevel
  return hf_torch.WORKERS[settings.peer](point, settings)


def measure(point: Point, settings: Settings, lmjax_worker: Callable = _lmjax_worker,
            peer_worker: Callable = _peer_worker) -> list[dict]:
  """The rows of one point: lmjax's, then the peer's when there is one.
  Their timed rounds alternate. A point that fails is one row with `error`."""
  names = ["lmjax"] + ([settings.peer] if settings.peer else [])
  makers = {"lmjax": lmjax_worker, settings.peer: peer_worker}
  processes, setups, times = {}, {}, {name: [] for name in names}
  rows = []
  try:
    for name in names:  # one at a time: compile times are each alone on the host
      processes[name] = _Process(makers[name], point, settings)
      setups[name] = processes[name].ask()
    for _ in range(settings.rounds):
      for name in names:
        times[name] += processes[name].ask("run", settings.steps)
    finished = {name: processes[name].ask("finish", 0) for name in names}
  except _PointFailed as e:
    if os.environ.get("LMJAX_BENCHMARK_DEBUG") and e.details:
      print(e.details, flush=True)
    return [_row(point, settings, "lmjax", error=str(e))]
  except BaseException:  # interrupted: the points' processes end now
    for process in processes.values():
      process.close(wait=0)
    raise
  finally:
    for process in processes.values():
      process.close()
  if settings.peer:  # the same host: lmjax's peak, for the whole host
    setups[settings.peer].update(
        peak_flops_per_device=(setups["lmjax"]["peak_flops_per_device"] or 0)
        * setups["lmjax"]["devices"] or None, peak_source=setups["lmjax"].get("peak_source"))
  for name in names:
    rows.append(_row(point, settings, name, times=times[name],
                     **setups[name], **finished[name]))
  if settings.peer:
    rows[0]["speedup_vs_peer"] = round(rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"], 3)
  return rows


def _row(point: Point, settings: Settings, implementation: str, times=(), error=None,
         peak_flops_per_device=None, devices=1, **measured) -> dict:
  row = dict(implementation=implementation, **dataclasses.asdict(point),
             mode=settings.mode, predictions=predictions(settings, point.seq_len)
             if point.objective == "mlm_nsp" else 0, dropout=settings.dropout)
  if error is not None:
    return {**row, "error": error}
  # Real tokens count; the model's FLOPs also count the padding it computes.
  tokens, slots = measured["real_tokens"], measured["token_slots"]
  median, fastest = statistics.median(times), min(times)
  model, useful = flops_per_token(point, settings)
  row.update(measured, devices=devices, steps_timed=len(times),
             step_ms_median=round(1e3 * median, 3), step_ms_min=round(1e3 * fastest, 3),
             tokens_per_s=round(tokens / median, 1))
  peak = peak_flops_per_device * devices if peak_flops_per_device else None
  row["model_mfu"] = round(model * slots / median / peak, 4) if peak else None
  row["useful_mfu"] = round(useful * tokens / median / peak, 4) if peak else None
  row["useful_tflops_per_s"] = round(useful * tokens / median / 1e12, 4)
  return row


def run(points: Sequence[Point], settings: Settings, output: str,
        echo: Callable[[str], None] = print) -> list[dict]:
  """Measures every point, printing a line each and appending it to
  results.jsonl as it goes; then results.csv and results.png."""
  rows = []
  try:
    for i, point in enumerate(points, 1):
      echo(f"[{i}/{len(points)}] {point.label()} ...")
      for row in measure(point, settings):
        rows.append(row)
        append_jsonl(output, row)
        echo(line(row))
  finally:  # an interrupted sweep keeps the table and plot of its points so far
    if rows:
      write_csv(output, rows)
    if any("error" not in r for r in rows):
      plot(output, rows)
  return rows
