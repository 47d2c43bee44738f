r"""Benchmark: what length bucketing does to a fine-tuning epoch. For each
setting of `--config.task.length_buckets` and `--config.task.group_by_length`,
runs `lmjax.finetune` for 1 and for `--epochs` epochs (each in a fresh
process) and prints the seconds an epoch takes once compiled (the
difference of the two runs' wall times over the extra epochs: training,
the epoch's evaluation and its checkpoint), the speed-up against the first
setting, and the runs' best validation and test scores, for every seed.

  python benchmarks/finetune_epoch.py --workdir=/tmp/finetune_epoch \
      --settings=1:0,4:0,4:16 --seeds=0,1,2 -- --config.init.source=random

The first setting is the reference: 1:0 pads every batch to
max_seq_length and batches examples as shuffled. Flags after `--` go to
every run (the default task and encoder are configs/finetune.py:transfer's,
from random weights). Results also land in WORKDIR/results.json.
"""

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from absl import flags

from lmjax import cli
from lmjax.errors import UserError

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/lmjax_finetune_epoch", "runs and results")
_SETTINGS = flags.DEFINE_list("settings", ["1:0", "4:0", "4:16"],
                              "LENGTH_BUCKETS:GROUP_BY_LENGTH pairs, the first the reference")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "epochs of the long run (the short run has 1)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds; epoch time is timed on the first")

ROOT = Path(__file__).parents[1]


def finetune(workdir: Path, setting: str, seed: int, epochs: int, extra: list[str]) -> dict:
  """Runs lmjax.finetune once; its summary with the wall time it took. A run
  this benchmark finished with the same command is read instead; any other
  run in `workdir` (stopped, killed, another command) is run again from
  scratch, since a resumed run's wall time is not an epoch count's."""
  buckets, group = setting.split(":")
  command = [sys.executable, "-m", "lmjax.finetune",
             f"--config={ROOT / 'configs/finetune.py'}:transfer", f"--workdir={workdir}",
             "--config.init.source=random", f"--config.seed={seed}",
             f"--config.train.epochs={epochs}", f"--config.task.length_buckets={buckets}",
             f"--config.task.group_by_length={group}", *extra]
  record = workdir / "benchmark.json"  # the command and its wall time, written last
  try:
    done = json.loads(record.read_text())
    summary = json.loads((workdir / "summary.json").read_text())
    if done["command"] == command[1:] and summary.get("stopped_by") is None:
      return {**summary, "wall_s": done["wall_s"]}
  except (OSError, ValueError, KeyError, TypeError):
    pass
  if workdir.exists():
    print(f"{workdir}: not a run this benchmark finished with this command; running it "
          "again from scratch", flush=True)
    shutil.rmtree(workdir)
  start = time.perf_counter()
  status = subprocess.run(command, check=False, stdout=subprocess.DEVNULL).returncode
  wall_s = round(time.perf_counter() - start, 2)
  summary = json.loads((workdir / "summary.json").read_text()) if not status else {}
  if status or summary.get("stopped_by"):
    raise UserError(f"{workdir}: lmjax.finetune "
                    f"{f'exited with status {status}' if status else 'was stopped'} (see "
                    "above); run the benchmark again to run it again")
  record.write_text(json.dumps({"command": command[1:], "wall_s": wall_s}) + "\n")
  return {**summary, "wall_s": wall_s}


def measure(setting: str, seeds: list[int], extra: list[str]) -> dict:
  root = Path(_WORKDIR.value) / setting.replace(":", "_")
  short = finetune(root / "short", setting, seeds[0], 1, extra)
  long = [finetune(root / f"seed_{s}", setting, s, _EPOCHS.value, extra) for s in seeds]
  main = long[0]["main_metric"]
  return dict(setting=setting, epoch_s=(long[0]["wall_s"] - short["wall_s"]) / (_EPOCHS.value - 1),
              short_run_s=short["wall_s"], long_run_s=long[0]["wall_s"],
              best_eval=[r[f"eval_{main}"] for r in long],
              test=[r.get(f"test_{main}") for r in long], metric=main)


def _mean_std(values) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  spread = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def _check(settings: list[str], seeds: list[str]) -> list[int]:
  """The seeds as integers; UserError for a malformed setting or seed."""
  for setting in settings:
    buckets, _, group = setting.partition(":")
    if not (buckets.isdigit() and group.isdigit() and int(buckets) >= 1):
      raise UserError(f"--settings: {setting!r} is not LENGTH_BUCKETS:GROUP_BY_LENGTH "
                      "(e.g. 4:16)")
  if not seeds or not all(s.isdigit() for s in seeds):
    raise UserError(f"--seeds: {','.join(seeds)!r} is not a list of seeds (e.g. 0,1,2)")
  if _EPOCHS.value < 2:
    raise UserError("--epochs must be at least 2")
  return [int(s) for s in seeds]


def main(argv):
  extra, seeds = argv[1:], _check(_SETTINGS.value, _SEEDS.value)
  rows = []
  for setting in _SETTINGS.value:
    row = measure(setting, seeds, extra)
    row["speedup"] = rows[0]["epoch_s"] / row["epoch_s"] if rows else 1.0
    rows.append(row)
    print(f"buckets:group {setting}: epoch {row['epoch_s']:.1f} s ({row['speedup']:.2f}x), "
          f"runs of 1 and {_EPOCHS.value} epochs {row['short_run_s']:.0f} / "
          f"{row['long_run_s']:.0f} s; best eval {row['metric']} "
          f"{' '.join(f'{v:.4f}' for v in row['best_eval'])} ({_mean_std(row['best_eval'])}), "
          f"test {_mean_std(row['test'])}", flush=True)
  (Path(_WORKDIR.value) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
  cli.run(main)
