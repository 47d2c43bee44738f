r"""Benchmark: what packing and length bucketing do to a fine-tuning epoch,
next to transformers in torch. For each setting (`packed`: packed rows, the
default; LENGTH_BUCKETS:GROUP_BY_LENGTH: one example a row, padded to
buckets; `torch`: transformers' BertForSequenceClassification on the same
examples, size, batch and optimizer, each batch padded to its longest
example), runs `lmjax.finetune` for 1 and for `--epochs` epochs (each in a
fresh process) and prints the seconds an epoch takes once compiled (the
difference of the two runs' wall times over the extra epochs: training,
the epoch's evaluation and its checkpoint), the speed-up against the first
setting, and the runs' best validation and test scores, for every seed.
torch's epoch is the mean of its epochs after the first (training and the
validation pass), timed in this process.

  python benchmarks/finetune_epoch.py --workdir=/tmp/finetune_epoch \
      --settings=1:0,4:0,packed,torch --seeds=0,1,2

The first setting is the reference: 1:0 pads every batch to
max_seq_length and batches examples as shuffled. Flags after `--` go to
every lmjax run (the default task and encoder are
configs/finetune.py:transfer's, from random weights). Results also land in
WORKDIR/results.json.
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
_SETTINGS = flags.DEFINE_list("settings", ["1:0", "4:0", "packed", "torch"],
                              "packed, torch or LENGTH_BUCKETS:GROUP_BY_LENGTH (one example "
                              "a row); the first is the reference")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "epochs of the long run (the short run has 1)")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds; epoch time is timed on the first")

ROOT = Path(__file__).parents[1]


def finetune(workdir: Path, setting: str, seed: int, epochs: int, extra: list[str]) -> dict:
  """Runs lmjax.finetune once; its summary with the wall time it took. A run
  this benchmark finished with the same command is read instead; any other
  run in `workdir` (stopped, killed, another command) is run again from
  scratch, since a resumed run's wall time is not an epoch count's."""
  batches = ["--config.task.packing=true"]
  if setting != "packed":
    buckets, group = setting.split(":")
    batches = ["--config.task.packing=false", f"--config.task.length_buckets={buckets}",
               f"--config.task.group_by_length={group}"]
  command = [sys.executable, "-m", "lmjax.finetune",
             f"--config={ROOT / 'configs/finetune.py'}:transfer", f"--workdir={workdir}",
             "--config.init.source=random", f"--config.seed={seed}",
             f"--config.train.epochs={epochs}", *batches, *extra]
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
  if setting == "torch":
    runs = [torch_epochs(s, _EPOCHS.value) for s in seeds]
    return dict(setting=setting, epoch_s=runs[0]["epoch_s"], short_run_s=runs[0]["first_s"],
                long_run_s=runs[0]["total_s"], best_eval=[r["best_eval"] for r in runs],
                test=[None for _ in runs], metric="accuracy")
  root = Path(_WORKDIR.value) / setting.replace(":", "_")
  short = finetune(root / "short", setting, seeds[0], 1, extra)
  long = [finetune(root / f"seed_{s}", setting, s, _EPOCHS.value, extra) for s in seeds]
  main = long[0]["main_metric"]
  return dict(setting=setting, epoch_s=(long[0]["wall_s"] - short["wall_s"]) / (_EPOCHS.value - 1),
              short_run_s=short["wall_s"], long_run_s=long[0]["wall_s"],
              best_eval=[r[f"eval_{main}"] for r in long],
              test=[r.get(f"test_{main}") for r in long], metric=main)


def torch_epochs(seed: int, epochs: int) -> dict:
  """transformers' BertForSequenceClassification trained as the lmjax runs
  are (configs/finetune.py:transfer: its size, batch, AdamW with BERT's
  b1, b2, eps, weight decay and clipping, the linear schedule, dropout) on
  the same encoded examples, each batch padded to its longest example;
  the mean seconds of an epoch after the first (its training and the
  validation pass), and the best validation accuracy."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  from lmjax.data import builtin, tasks  # pylint: disable=import-outside-toplevel
  from lmjax.data.tokenization import Tokenizer  # pylint: disable=import-outside-toplevel
  from lmjax.model.config import sized_fields  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, str(ROOT / "configs"))
  import finetune as finetune_config  # pylint: disable=import-outside-toplevel
  config = finetune_config.get_config("transfer")
  task = tasks.resolve_task(config.task)
  tokenizer = Tokenizer.load(config.task.tokenizer or builtin.TOKENIZER_FILE)
  encoded = {split: tasks.encode(tasks.load_split(task, split), tokenizer,
                                 config.task.max_seq_length).arrays
             for split in ("train", "validation")}
  torch.manual_seed(seed)
  sized, train = sized_fields(config.model.size), config.train
  model = transformers.BertForSequenceClassification(transformers.BertConfig(
      vocab_size=tokenizer.vocab_size, hidden_size=sized["hidden_size"],
      num_hidden_layers=sized["num_layers"], num_attention_heads=sized["num_heads"],
      intermediate_size=sized["intermediate_size"], num_labels=task.num_labels,
      hidden_dropout_prob=config.model.dropout_rate,
      attention_probs_dropout_prob=config.model.attention_dropout_rate,
      max_position_embeddings=config.model.max_position))
  decay = [p for n, p in model.named_parameters() if not ("bias" in n or "LayerNorm" in n)]
  rest = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=train.learning_rate, betas=(train.b1, train.b2), eps=train.eps)
  steps_per_epoch = len(encoded["train"]["labels"]) // train.batch_size
  total = steps_per_epoch * epochs
  warmup = int(train.warmup_fraction * total)
  schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
      (s + 1) / max(warmup, 1), max(0.0, (total - s) / max(total - warmup, 1))))

  def batch(arrays, rows):
    longest = int(arrays["input_mask"][rows].sum(1).max())
    take = lambda k: torch.from_numpy(arrays[k][rows, :longest]).long()  # noqa: E731
    return dict(input_ids=take("input_ids"), token_type_ids=take("segment_ids"),
                attention_mask=take("input_mask"))

  rng, times, best = np.random.default_rng(seed), [], 0.0
  for _ in range(epochs):
    start = time.perf_counter()
    model.train()
    order = rng.permutation(len(encoded["train"]["labels"]))
    for k in range(steps_per_epoch):
      rows = order[k * train.batch_size:(k + 1) * train.batch_size]
      labels = torch.from_numpy(encoded["train"]["labels"][rows]).long()
      loss = model(**batch(encoded["train"], rows), labels=labels).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip_norm)
      optimizer.step()
      schedule.step()
      optimizer.zero_grad(set_to_none=True)
    model.eval()
    correct, validation = 0, encoded["validation"]
    with torch.no_grad():
      for k in range(0, len(validation["labels"]), config.train.eval_batch_size):
        rows = np.arange(k, min(k + config.train.eval_batch_size, len(validation["labels"])))
        logits = model(**batch(validation, rows)).logits.numpy()
        correct += int((logits.argmax(1) == validation["labels"][rows]).sum())
    best = max(best, correct / len(validation["labels"]))
    times.append(time.perf_counter() - start)
  return dict(epoch_s=sum(times[1:]) / max(len(times) - 1, 1), first_s=times[0],
              total_s=sum(times), best_eval=best)


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
    if setting not in ("packed", "torch") and not (
        buckets.isdigit() and group.isdigit() and int(buckets) >= 1):
      raise UserError(f"--settings: {setting!r} is not packed, torch or "
                      "LENGTH_BUCKETS:GROUP_BY_LENGTH (e.g. 4:16)")
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
    print(f"{setting}: epoch {row['epoch_s']:.1f} s ({row['speedup']:.2f}x), "
          f"runs of 1 and {_EPOCHS.value} epochs {row['short_run_s']:.0f} / "
          f"{row['long_run_s']:.0f} s; best eval {row['metric']} "
          f"{' '.join(f'{v:.4f}' for v in row['best_eval'])} ({_mean_std(row['best_eval'])}), "
          f"test {_mean_std(row['test'])}", flush=True)
  (Path(_WORKDIR.value) / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
  cli.run(main)
