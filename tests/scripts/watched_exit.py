"""Run by tests/launch_test.py under launch/local.sh: one process of several
whose peer watch polls the coordination service without pause, then ends
as a run does (lmjax.distributed.leave_together, then the interpreter's
exit). A watch thread still polling while the interpreter finalizes would
abort the process."""

import os
import time

import jax

from lmjax import distributed


def main() -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  address, count, index = (os.environ[n] for n in distributed.NAMES)
  jax.distributed.initialize(address, int(count), int(index))
  distributed.watch_peers(timeout=20.0, interval=1e-4)
  time.sleep(1.0)
  distributed.leave_together()
  print(f"process {jax.process_index()} leaves", flush=True)


if __name__ == "__main__":
  main()
