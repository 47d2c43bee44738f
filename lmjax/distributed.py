"""Several processes as one run: JAX's distributed runtime, and a watch that
ends a process whose peer is gone.

Every entry point calls `initialize()` first. In a single process it does
nothing; in one process of several it connects to JAX's coordination
service, and from then on a watch thread publishes a beat there every
second and reads the others'. A process killed outside the program
(SIGKILL, a lost host) leaves the others waiting in a collective that never
completes; when its beat has not moved for `LMJAX_PEER_TIMEOUT_S` seconds
(default 20) the watch ends this process with one line. Without it JAX's
own heartbeat check would abort the process with a C++ stack trace, later.
The same watch ends this process when another one called `stop_all` (its
run stopped making progress, lmjax.trainer.watch), with that one's line.
"""

import atexit
import contextlib
import ctypes
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import jax

from lmjax import console
from lmjax.errors import ConfigError

NAMES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
PEER_LOST_STATUS = 1
_EXITED = "exited"


def initialize(environ=os.environ) -> None:
  """Starts JAX's distributed runtime when this is one process of several.

  Explicitly, from JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES
  and JAX_PROCESS_ID, all three or none; or detected by JAX on a multi-host
  TPU slice or a SLURM job of several tasks. CPU processes exchange data
  through gloo. A single process does nothing.
  """
  if not requested(environ):
    return
  given = {n: environ.get(n, "") for n in NAMES}
  explicit = ()
  if any(given.values()):
    missing = [n for n, v in given.items() if not v]
    if missing:
      raise ConfigError(f"{', '.join(n for n in NAMES if given[n])} set but not "
                        f"{', '.join(missing)}: set all three, or none")
    count = _int(given["JAX_NUM_PROCESSES"], "JAX_NUM_PROCESSES")
    index = _int(given["JAX_PROCESS_ID"], "JAX_PROCESS_ID")
    if not 0 <= index < count:
      raise ConfigError(f"JAX_PROCESS_ID must be in [0, JAX_NUM_PROCESSES={count}), "
                        f"got {index}")
    explicit = (given["JAX_COORDINATOR_ADDRESS"], count, index)
  timeout = _float(environ.get("LMJAX_PEER_TIMEOUT_S", "20"), "LMJAX_PEER_TIMEOUT_S")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(*explicit)  # () : JAX detects the TPU slice or SLURM job
  if jax.process_count() > 1:
    watch_peers(timeout)


def requested(environ=os.environ) -> bool:
  """Whether this is meant to be one process of several."""
  return (any(environ.get(n) for n in NAMES)
          or "," in environ.get("TPU_WORKER_HOSTNAMES", "")
          or _int(environ.get("SLURM_NTASKS", "1"), "SLURM_NTASKS") > 1)


def watch_peers(timeout: float, interval: float = 1.0) -> threading.Thread:
  """Starts the watch thread (see the module docstring). At exit the watch
  stops before JAX's own clean-up, and the process then says it exited, so
  that finishing is not taken for dying. (A daemon thread still calling the
  coordination service when the interpreter finalizes is ended in the middle
  of C++ code, and that aborts the process: `terminate called after
  throwing an instance of ''`.)"""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  global _me, _count  # pylint: disable=global-statement
  client = distributed.global_state.client
  me, count = jax.process_index(), jax.process_count()
  _me, _count = me, count

  def beat(value: str) -> None:
    client.key_value_set(f"lmjax/beat/{me}", value, allow_overwrite=True)

  def watch() -> None:
    seen = {p: (None, time.monotonic()) for p in range(count) if p != me}
    unreachable_since = None
    for n in range(sys.maxsize):
      if finished.is_set():
        return
      now = time.monotonic()
      try:
        beat(str(n))
        values = {p: _try_get(client, f"lmjax/beat/{p}") for p in seen}
        stopped_by_another = _try_get(client, _STOP_ALL)
        unreachable_since = None
      except Exception:  # pylint: disable=broad-exception-caught
        unreachable_since = unreachable_since or now
        if now - unreachable_since > timeout:
          _stop(f"the coordination service (process 0) has not answered for "
                f"{timeout:.0f} s: process 0 is gone (killed, or its host lost)")
        values, stopped_by_another = {}, None
      if stopped_by_another and not _announced:
        _stop(stopped_by_another)
      for p, value in values.items():
        if value is None:  # not beaten yet
          continue
        if value == _EXITED:
          seen.pop(p)
        elif value != seen[p][0]:
          seen[p] = (value, now)
      lost = [p for p, (_, since) in seen.items() if now - since > timeout]
      if lost:
        _stop(f"process {lost[0]} of {count} has shown no sign of life for "
              f"{timeout:.0f} s (killed, or its host lost)")
      finished.wait(interval)

  def leave() -> None:
    finished.set()
    thread.join(timeout + interval)
    _quietly(beat, _EXITED)

  finished = threading.Event()
  thread = threading.Thread(target=watch, name="lmjax-peer-watch", daemon=True)
  thread.start()
  atexit.register(leave)  # after jax's clean-up was registered: runs before it
  return thread


_STOP_ALL = "lmjax/stop_all"
_STOP_ALL_WAIT_S = 3.0  # the others' watches read the key every second
_announced = False  # this process called stop_all
_me: int | None = None  # this process's index, once the watch runs
_count = 1  # and the run's number of processes


def stop_all(cause: str) -> None:
  """Ends this process with one line naming `cause`, and every other
  process of the run with the same line (their watches read it from the
  coordination service). When another process announced first, its cause
  is the line. Never returns."""
  global _announced  # pylint: disable=global-statement
  _announced = True
  too = False
  if jax.process_count() > 1:
    from jax._src import distributed  # pylint: disable=import-outside-toplevel
    client = distributed.global_state.client
    try:
      client.key_value_set(_STOP_ALL, cause)
    except Exception:  # pylint: disable=broad-exception-caught
      with contextlib.suppress(Exception):  # the service is gone: nobody is watching
        earlier = _try_get(client, _STOP_ALL)
        cause, too = (earlier, True) if earlier else (cause, too)
  _stop(cause, too=too)


def _stopped_by_another() -> str | None:
  """The cause another process announced with `stop_all`, if any."""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  with contextlib.suppress(Exception):
    return _try_get(distributed.global_state.client, _STOP_ALL)
  return None


_LEAVE = "lmjax/leave"
LEAVE_TIMEOUT_S = 600.0


def leave_together(timeout_s: float = LEAVE_TIMEOUT_S) -> None:
  """At the end of a run of several processes: waits (at a barrier of the
  coordination service) until every process has done its work. JAX's exit
  closes a process's collective connections before anything else, and a
  peer still in a collective then aborts; leaving together, none is. A
  process gone meanwhile is the peer watch's to report."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  _quietly(distributed.global_state.client.wait_at_barrier, _LEAVE, int(timeout_s * 1000))


_LOST_PEER = ("Gloo", "Connection reset by peer", "Connection closed by peer", "Socket closed")


@contextlib.contextmanager
def lost_peers_in_one_line():
  """Within it, a collective that fails because another process of the run
  is gone (gloo sees its connection reset) ends this process with one line
  and status 1, like the watch; not a traceback and then JAX's exit, which
  would wait for the lost process."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-exception-caught
    if jax.process_count() > 1 and any(m in str(e) for m in _LOST_PEER):
      announced = _stopped_by_another()  # it stopped first, and said why
      _stop(announced or "another process of this run is gone (killed, or its host lost): "
            "a collective with it failed")
    raise


def _try_get(client, key: str) -> str | None:
  """The value of `key` in the coordination service; None when unset."""
  try:
    return client.key_value_try_get(key)
  except Exception as e:  # pylint: disable=broad-exception-caught
    if "NOT_FOUND" in str(e):
      return None
    raise


_stopping = threading.Lock()  # held by the one thread that ends this process


def _stop(cause: str, too: bool = True) -> None:
  """Ends this process with one line. A second thread that comes to end it
  too (the watch has read another process's cause while a collective with
  that process fails) waits for the first, which prints and exits."""
  if not _stopping.acquire(blocking=False):
    while True:
      time.sleep(3600)
  # Not jax.process_index(): at exit JAX's backends may be gone already.
  me = _me if _me is not None else jax.process_index()
  print(f"\nerror: {cause}; process {me} stops{' too' if too else ''}. "
        "Rerun the same command on every host to resume from the newest checkpoint",
        file=sys.stderr, flush=True)
  if me == 0 and _count > 1:
    # The coordination service lives here, and the runtime aborts the others
    # with a C++ stack trace once it is gone: they stop first (their watches
    # read the cause within a second, or their collectives fail).
    time.sleep(_STOP_ALL_WAIT_S)
  os._exit(PEER_LOST_STATUS)  # the main thread is stuck in a collective


def _quietly(fn, *args) -> None:
  with contextlib.suppress(Exception):  # the service is gone: nobody is watching
    fn(*args)


def _int(value: str, name: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"{name} must be a whole number, got {value!r}") from None


def _float(value: str, name: str) -> float:
  try:
    result = float(value)
  except ValueError:
    result = 0.0
  if not result > 0:
    raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
  return result


# A line of the C++ runtime's log: "E1129 16:21:39.290694   24648 file.cc:289] ".
_CPP_LOG = re.compile(rb"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ")
_FATAL = b"JAX distributed service detected fatal errors"


def supervise(argv: list[str], environ=os.environ) -> int:
  """Runs `argv` (this same command) as a child process and returns its exit
  status. Its output passes through, except gloo's connection notices
  (lmjax.console) and when JAX's distributed runtime aborts it because
  another process died (the coordinator's host gone): that C++ log and
  stack trace become one line. SIGTERM and SIGINT reach the
  child; the child dies with this process."""
  quiet = not console.verbose()
  child = subprocess.Popen(argv, env={**environ, "LMJAX_SUPERVISED": "1"},
                           stdout=subprocess.PIPE if quiet else None,
                           stderr=subprocess.PIPE, process_group=0,
                           preexec_fn=_die_with_parent)
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, frame: child.send_signal(signum))
  if quiet:  # gloo's connection notices, one a peer
    stdout = threading.Thread(target=console.copy_lines, daemon=True,
                              args=(child.stdout.fileno(), sys.stdout.fileno(), console.GLOO))
    stdout.start()
  aborted = _pass_through(child.stderr.fileno(), sys.stderr.buffer)
  status = child.wait()
  if quiet:
    stdout.join(timeout=10)
  if aborted:
    print(f"\nerror: JAX's distributed runtime lost another process of this run (killed, "
          f"or its host lost); process {environ.get('JAX_PROCESS_ID', '?')} stops too. "
          "Rerun the same command on every host to resume from the newest checkpoint",
          file=sys.stderr, flush=True)
    return PEER_LOST_STATUS
  return status if status >= 0 else 128 - status  # as a shell reports a signal


def _pass_through(fd: int, out, hold_s: float = 2.0) -> bool:
  """Copies `fd` to `out` as it comes until EOF. From a line of the C++
  runtime's log on, output is held back for `hold_s` seconds: when the
  abort follows within them, all of it is dropped (the abort's log has
  several such lines and continuations), otherwise it is shown. Everything
  after the abort is dropped. Returns whether the abort came."""
  held, rest, since = b"", b"", None
  while True:
    ready, _, _ = select.select([fd], [], [], hold_s if since else None)
    chunk = os.read(fd, 1 << 16) if ready else b""
    if ready and not chunk:
      break
    *lines, rest = (rest + chunk).split(b"\n")
    for line in lines:
      if _FATAL in line:
        while os.read(fd, 1 << 16):  # the stack trace, Python's fault dump
          pass
        return True
      if since is None and _CPP_LOG.match(line):
        since = time.monotonic()
      if since is None:
        out.write(line + b"\n")
      else:
        held += line + b"\n"
    if since is not None and time.monotonic() - since >= hold_s:
      out.write(held)  # not the abort's
      held, since = b"", None
    if since is None and rest and not (rest[:1] in b"IWEF" and
                                       (len(rest) < 40 or _CPP_LOG.match(rest))):
      out.write(rest)  # a progress bar: shown at once
      rest = b""
    out.flush()
  out.write(held + rest)
  out.flush()
  return False


def _die_with_parent() -> None:
  """In the child: SIGKILL when the supervising parent dies (Linux)."""
  with contextlib.suppress(Exception):
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
