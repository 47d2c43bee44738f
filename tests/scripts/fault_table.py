"""The fault table of a 2-process pretraining run (a manual check, about
20 minutes on 2 cores): one process killed in each phase (step, evaluation,
checkpoint save, probe), and SIGTERM to launch/local.sh in each phase; then
the same command again, which must resume and repeat the uninterrupted
run's losses bit for bit. Prints a markdown table.

  python tests/scripts/fault_table.py WORKDIR_ROOT CORPUS.txt
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[2]
LAUNCH = str(ROOT / "launch" / "local.sh")
FLAGS = ["--config=configs/pretrain.py", "--config.data.max_seq_length=32",
         "--config.data.max_predictions_per_seq=5", "--config.train.batch_size=8",
         "--config.train.steps=30", "--config.train.warmup_steps=5",
         "--config.train.log_every=1", "--config.train.eval_every=15",
         "--config.train.eval_batches=2", "--config.train.checkpoint_every=10",
         "--config.probe.train_examples=200", "--config.probe.eval_examples=100",
         "--config.train.stall_timeout_s=60"]
CASES = [("kill", "step:13"), ("kill", "evaluation"), ("kill", "save:20"), ("kill", "probe"),
         ("term", "step:13"), ("term", "evaluation"), ("term", "save:20"), ("term", "probe")]
if len(sys.argv) > 3:  # ACTION:PHASE ... : those cases only
  CASES = [tuple(c.split(":", 1)) for c in sys.argv[3:]]


def losses(workdir: Path) -> dict[int, float]:
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {line["step"]: line["loss"] for line in lines if "loss" in line}


def checkpoints(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def left(workdir: Path) -> int:
  found = subprocess.run(["pgrep", "-f", f"--workdir={workdir}"], capture_output=True,
                         text=True, check=False).stdout.split()
  return len(found)


def run(command: list[str], on_line=None, timeout: float = 400) -> tuple[int, str, float]:
  start = time.monotonic()
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  out = []
  for line in process.stdout:
    out.append(line)
    if on_line:
      on_line(line, process)
    if time.monotonic() - start > timeout:
      process.kill()
  process.wait()
  return process.returncode, "".join(out), time.monotonic() - start


def case(root: Path, corpus: str, action: str, phase: str, reference: dict) -> str:
  workdir = root / f"{action}-{phase.replace(':', '-')}"
  base = [*FLAGS, f"--config.data.source=text:{corpus}", f"--workdir={workdir}"]
  where = f"{'kill' if action == 'kill' else 'slow'}@1:{phase}"
  command = [LAUNCH, "2", sys.executable, "tests/scripts/stalled_run.py", where,
             "lmjax.pretrain", *base]
  sent = []

  def on_line(line, process):
    if action == "term" and not sent and "slow process 1" in line:
      time.sleep(2)  # well inside the phase
      process.send_signal(signal.SIGTERM)
      sent.append(time.monotonic())

  status, out, seconds = run(command, on_line)
  errors = [line.strip() for line in out.splitlines() if "error:" in line]
  saved = checkpoints(workdir) if (workdir / "checkpoints").exists() else []
  remaining = left(workdir)
  again, again_out, _ = run([LAUNCH, "2", sys.executable, "-m", "lmjax.pretrain", *base])
  resumed = [line for line in again_out.splitlines() if "resuming from" in line]
  same = again == 0 and losses(workdir) == reference
  ended = f"{seconds:.0f} s"
  return (f"| {action} | {phase} | {status} | {ended} | {errors[-1][:90] if errors else '-'} "
          f"| {saved} | {remaining} | {resumed[0].split('] ', 1)[-1][:45] if resumed else '-'} "
          f"| {'yes' if same else 'NO'} |")


def main() -> None:
  root, corpus = Path(sys.argv[1]), sys.argv[2]
  root.mkdir(parents=True, exist_ok=True)
  reference_dir = root / "reference"
  status, out, seconds = run([LAUNCH, "2", sys.executable, "-m", "lmjax.pretrain", *FLAGS,
                              f"--config.data.source=text:{corpus}",
                              f"--workdir={reference_dir}"])
  assert status == 0, out[-3000:]
  reference = losses(reference_dir)
  print(f"reference: {len(reference)} steps in {seconds:.0f} s", flush=True)
  print("| fault | phase | exit | ended after | last error line | checkpoints | processes left "
        "| rerun | rerun repeats the losses |\n|---|---|---|---|---|---|---|---|---|", flush=True)
  for action, phase in CASES:
    print(case(root, corpus, action, phase, reference), flush=True)


if __name__ == "__main__":
  main()
