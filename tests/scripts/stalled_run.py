"""Run by tests/launch_test.py and tests/scripts/fault_table.py: an lmjax
command in which one process stalls in one phase (sleeps for good, as a hung
collective, a bucket that stops answering or a stuck reader would), dies
there (SIGKILL), or is slow there (sleeps 8 s, then goes on).

  python tests/scripts/stalled_run.py [ACTION@]PROCESS:PHASE[:STEP] MODULE [FLAGS...]

ACTION is stall (the default), kill or slow. PHASE is step (the batch of
STEP), evaluation, probe or save (the checkpoint of STEP). Other processes
run MODULE as it is. A process that reaches the phase says so on stdout.
"""

import os
import runpy
import signal
import sys
import time


_ACTION = ["stall"]


def _stall(*args, **kwargs):
  """Stands in for the phase's function (whose original, if any, follows)."""
  del args, kwargs
  action = _ACTION[0]
  print(f"{action} process {os.environ['JAX_PROCESS_ID']}", flush=True)
  if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
  time.sleep(8 if action == "slow" else 10**6)


def _inject(phase: str, step: int) -> None:
  # pylint: disable=import-outside-toplevel
  from lmjax.data import loader
  from lmjax.runs import probe
  from lmjax.train import mlm_nsp
  from lmjax.trainer import checkpoints

  if phase == "evaluation":
    evaluate = mlm_nsp.evaluate
    mlm_nsp.evaluate = lambda *a: (_stall(), evaluate(*a))[1]
  elif phase == "probe":
    call = probe.Probe.__call__
    probe.Probe.__call__ = lambda self, params: (_stall(), call(self, params))[1]
  elif phase == "step":
    original = loader.Loader.__next__
    loader.Loader.__next__ = lambda self: ((_stall(), original(self))[1]
                                           if self.step + 1 == step else original(self))
  elif phase == "save":
    original_save = checkpoints.Checkpoints.save
    checkpoints.Checkpoints.save = lambda self, s, *a: (
        (_stall(), original_save(self, s, *a))[1] if s == step else original_save(self, s, *a))
  else:
    raise SystemExit(f"unknown phase {phase}")


def main() -> None:
  where, module, *flags = sys.argv[1:]
  if "@" in where:
    _ACTION[0], where = where.split("@")
  process, phase, *step = where.split(":")
  if os.environ.get("LMJAX_SUPERVISED") and os.environ["JAX_PROCESS_ID"] == process:
    _inject(phase, int(step[0]) if step else 0)
  sys.argv = [module, *flags]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
