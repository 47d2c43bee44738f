r"""Benchmark: pretraining data at scale. For corpora of each size, prints
what `lmjax.prepare` takes (MB/s of text per core) and what a training
process then needs to reach its first batch (seconds, peak RSS), and how
fast the loader masks sequences.

  python benchmarks/data_scale.py --sizes_mb=40,400 --workdir=/tmp/data_scale

Corpora are copies of the built-in Austen text, each chapter marked with its
copy so that documents differ. Every measurement runs in a fresh process.
"""

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

_SIZES = flags.DEFINE_list("sizes_mb", ["40", "400"], "corpus sizes in MB of text")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/lmjax_data_scale", "corpora and outputs")
_SHARDS = flags.DEFINE_integer("num_shards", 8, "shards per split")
_BATCHES = flags.DEFINE_integer("batches", 300, "batches of 32 the loader is timed over")

ROOT = Path(__file__).parents[1]

_FIRST_BATCH = """
import json, resource, sys, time
start = time.perf_counter()
import importlib.util
from lmjax.data import loader, pretrain_input
spec = importlib.util.spec_from_file_location("c", sys.argv[1] + "/configs/pretrain.py")
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
config = module.get_config()
config.data.source = "prepared:" + sys.argv[2]
dataset, _, info = pretrain_input.pretraining_input(config.data, 32, seed=0)
batches = loader.Loader(dataset, num_threads=config.data.num_threads)
next(batches)
first = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
t = time.perf_counter()
for _ in range(int(sys.argv[3])):
  next(batches)
rate = int(sys.argv[3]) * 32 / (time.perf_counter() - t)
print(json.dumps(dict(first_batch_s=round(first, 2), peak_rss_gb=round(rss, 3),
                      masked_sequences_per_s=round(rate), pairs=info["pairs"])))
"""


def make_corpus(directory: Path, megabytes: float) -> float:
  """BERT-format files of about `megabytes` MB; returns the MB written."""
  if (directory / "done").is_file():
    return float((directory / "done").read_text())
  directory.mkdir(parents=True, exist_ok=True)
  with gzip.open(ROOT / "lmjax/data/builtin/austen.txt.gz", "rt", encoding="utf-8") as f:
    chapters = [c for c in f.read().split("\n\n") if c.strip()]
  written, copy = 0, 0
  while written < megabytes * 1e6:  # ten copies a file
    with open(directory / f"part-{copy // 10:04d}.txt", "a", encoding="utf-8") as out:
      for c, chapter in enumerate(chapters):
        text = f"Copy {copy} of chapter {c}.\n{chapter.strip()}\n\n"
        out.write(text)
        written += len(text.encode())
    copy += 1
  (directory / "done").write_text(str(written / 1e6))
  return written / 1e6


def main(argv):
  del argv
  work = Path(_WORKDIR.value)
  rows = []
  for size in map(float, _SIZES.value):
    corpus = work / f"corpus-{size:g}mb"
    megabytes = make_corpus(corpus, size)
    output = work / f"prepared-{size:g}mb"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lmjax.prepare", f"--source=text:{corpus}/*.txt",
         f"--output={output}", f"--num_shards={_SHARDS.value}", "--overwrite"],
        capture_output=True, text=True, cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    cores = os.cpu_count() or 1
    first = subprocess.run([sys.executable, "-c", _FIRST_BATCH, str(ROOT), str(output),
                            str(_BATCHES.value)],
                           capture_output=True, text=True, cwd=ROOT, check=True)
    row = dict(text_mb=round(megabytes, 1), prepare_s=round(seconds, 1),
               prepare_mb_per_s_per_core=round(megabytes / seconds / cores, 2), cores=cores,
               **json.loads(first.stdout.strip().splitlines()[-1]),
               pairs_train=summary["train"]["pairs"])
    rows.append(row)
    print(json.dumps(row), flush=True)
  print(f"{'text MB':>8} {'prepare s':>10} {'MB/s/core':>10} {'1st batch s':>12} "
        f"{'peak RSS GB':>12} {'masked seq/s':>13} {'pairs':>10}")
  for r in rows:
    print(f"{r['text_mb']:>8,.0f} {r['prepare_s']:>10.1f} {r['prepare_mb_per_s_per_core']:>10.2f} "
          f"{r['first_batch_s']:>12.2f} {r['peak_rss_gb']:>12.3f} "
          f"{r['masked_sequences_per_s']:>13,} {r['pairs']:>10,}")


if __name__ == "__main__":
  app.run(main)
