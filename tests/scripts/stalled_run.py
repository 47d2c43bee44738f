"""Run by tests/launch_test.py: an lmjax command in which one process
stalls (sleeps for good) in one phase, as a hung collective, a bucket that
stops answering or a stuck reader would.

  python tests/scripts/stalled_run.py PROCESS:PHASE[:STEP] MODULE [FLAGS...]

PHASE is step (the batch of STEP never comes), evaluation, probe or save
(the checkpoint of STEP). Other processes run MODULE as it is.
"""

import os
import runpy
import sys
import time


def _stall(*args, **kwargs):
  del args, kwargs
  print(f"stalling process {os.environ['JAX_PROCESS_ID']}", flush=True)
  time.sleep(10**6)


def _inject(phase: str, step: int) -> None:
  # pylint: disable=import-outside-toplevel
  from lmjax.data import loader
  from lmjax.runs import probe
  from lmjax.train import mlm_nsp
  from lmjax.trainer import checkpoints

  if phase == "evaluation":
    mlm_nsp.evaluate = _stall
  elif phase == "probe":
    probe.Probe.__call__ = _stall
  elif phase == "step":
    original = loader.Loader.__next__
    loader.Loader.__next__ = lambda self: (_stall() if self.step + 1 == step
                                           else original(self))
  elif phase == "save":
    original_save = checkpoints.Checkpoints.save
    checkpoints.Checkpoints.save = lambda self, s, *a: (_stall() if s == step
                                                        else original_save(self, s, *a))
  else:
    raise SystemExit(f"unknown phase {phase}")


def main() -> None:
  where, module, *flags = sys.argv[1:]
  process, phase, *step = where.split(":")
  if os.environ.get("LMJAX_SUPERVISED") and os.environ["JAX_PROCESS_ID"] == process:
    _inject(phase, int(step[0]) if step else 0)
  sys.argv = [module, *flags]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
