"""lmjax.console: noise dropped at the file descriptor, the rest intact."""

import os
import subprocess
import sys
import threading

from lmjax import console


def copied(chunks: list[bytes], drop) -> bytes:
  """What copy_lines passes on when `chunks` are written one by one."""
  source_r, source_w = os.pipe()
  target_r, target_w = os.pipe()
  copier = threading.Thread(target=console.copy_lines, args=(source_r, target_w, drop))
  copier.start()
  for chunk in chunks:
    os.write(source_w, chunk)
  os.close(source_w)
  copier.join(timeout=10)
  os.close(target_w)
  with os.fdopen(target_r, "rb") as f:
    return f.read()


def test_gloo_lines_go_and_everything_else_stays_even_split_across_writes():
  chunks = [b"[0] start\n[Gl", b"oo] Rank 0 is connected to 7 peer ranks.\n",
            b"step 1\r", b"bar 50%\r", b"[Gloo] Rank 1 is connected\n",
            b"{\"step\": 4}\n", b"[Glow] not gloo\n", b"no newline at the end"]
  assert copied(chunks, console.GLOO) == (
      b"[0] start\nstep 1\rbar 50%\r{\"step\": 4}\n[Glow] not gloo\nno newline at the end")


def test_beam_worker_notices_go_but_errors_and_our_lines_stay():
  chunks = [b"INFO:__main__:Python sdk harness exiting.\n",
            b"WARNING:root:apitools not found\n",
            b"INFO:apache_beam.runners.worker.sdk_worker:Done consuming work.\n",
            b"ERROR:apache_beam.runners:a real failure\n",
            b"read corpus.txt: 3 documents\n", b"error: no such file\n"]
  assert copied(chunks, console.BEAM_WORKERS) == (
      b"ERROR:apache_beam.runners:a real failure\nread corpus.txt: 3 documents\n"
      b"error: no such file\n")


def test_dropping_filters_what_child_processes_write_to_the_descriptor():
  script = ("import os, subprocess, sys\n"
            "from lmjax import console\n"
            "with console.dropping(2, console.BEAM_WORKERS):\n"
            "  subprocess.run([sys.executable, '-c', 'import logging; "
            "logging.basicConfig(level=logging.INFO); "
            "logging.getLogger(\"__main__\").info(\"harness exiting\"); "
            "logging.getLogger(\"x\").error(\"kept\")'])\n"
            "print('after', file=sys.stderr)\n")
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        check=True, timeout=60)
  assert done.stderr == "ERROR:x:kept\nafter\n"
