"""Lines on the console that tell a user nothing: dropped at the file
descriptor, where C++ libraries and worker subprocesses write too.

  gloo's '[Gloo] Rank 3 is connected to 7 peer ranks...' (one a peer, each
  process, stdout), and Apache Beam's worker processes' start-up and exit
  notices ('INFO:__main__:Python sdk harness exiting.', stderr).

`--verbosity=0` (absl's INFO) or more shows them again.
"""

import contextlib
import os
import re
import sys
import threading

from absl import logging as absl_logging

GLOO = (b"[Gloo] ",)
BEAM_WORKERS = tuple(f"{level}:{logger}".encode() for level in ("INFO", "WARNING")
                     for logger in ("root:", "__main__:", "apache_beam"))


def verbose() -> bool:
  """Whether --verbosity asks for everything (INFO or more)."""
  return absl_logging.get_verbosity() >= 0


def copy_lines(source: int, target: int, drop: tuple[bytes, ...]) -> None:
  """Copies file descriptor `source` to `target` until EOF, leaving out the
  lines (ended by a newline or a carriage return) that start with one of
  `drop`. The start of a line (a progress bar's) is shown at once unless it
  could begin one of them."""
  held = b""
  while chunk := os.read(source, 1 << 16):
    *lines, held = _LINE_END.split(held + chunk)
    kept = [line for line in lines if not line.startswith(drop)]
    if held and not any(p.startswith(held) or held.startswith(p) for p in drop):
      kept.append(held)
      held = b""
    _write_all(target, b"".join(kept))
  if not held.startswith(drop):
    _write_all(target, held)


_LINE_END = re.compile(rb"(?<=[\r\n])")


def _write_all(fd: int, data: bytes) -> None:
  while data:
    data = data[os.write(fd, data):]


@contextlib.contextmanager
def dropping(fd: int, drop: tuple[bytes, ...]):
  """Within it, what this process or a child that inherits `fd` writes to
  it passes through `copy_lines`; unless --verbosity asks for everything."""
  if verbose():
    yield
    return
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  original = os.dup(fd)
  read_end, write_end = os.pipe()
  os.dup2(write_end, fd)
  os.close(write_end)
  copier = threading.Thread(target=copy_lines, args=(read_end, original, drop),
                            name="lmjax-console", daemon=True)
  copier.start()
  try:
    yield
  finally:
    for stream in (sys.stdout, sys.stderr):
      stream.flush()
    os.dup2(original, fd)  # the pipe's last writer closes: the copier reaches EOF
    copier.join(timeout=10)
    os.close(read_end)
    os.close(original)
