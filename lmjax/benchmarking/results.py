"""What a benchmark sweep leaves: a console line per row, results.jsonl as it
goes, then results.csv and results.png."""

import csv
import json
import os
from collections.abc import Iterable

from lmjax import paths
from lmjax.benchmarking.points import SWEEP_FIELDS, point_of
from lmjax.errors import UserError


def line(row: dict) -> str:
  """A row as one console line."""
  point = point_of(row)
  label = (point.label() if row["implementation"] == "lmjax" else
           f"{point.model} L{point.seq_len} B{point.batch} {point.dtype} {point.objective}"
           + ("" if point.lengths == "full" else f" lengths={point.lengths} padded to longest"))
  name = f"{row['implementation']:>8} {label}"
  if "error" in row:
    return f"{name}: failed: {row['error']}"
  mfu = f", useful MFU {row['useful_mfu']:.1%}" if row.get("useful_mfu") else ""
  speedup = f", {row['speedup_vs_peer']:.2f}x the peer" if "speedup_vs_peer" in row else ""
  compile_s = f", compile {row['compile_s']:.1f} s" if "compile_s" in row else ""
  real = row.get("real_token_fraction", 1.0)
  rows = f" in {row['rows']} rows ({real:.1%} real)" if real < 1 else ""
  return (f"{name}: {row['tokens_per_s']:,.0f} tokens/s{rows}, step {row['step_ms_median']:.1f} ms"
          f" (min {row['step_ms_min']:.1f}){mfu}{compile_s}, peak RSS "
          f"{row['peak_rss_bytes'] / 2**30:.2f} GiB{speedup}")


def append_jsonl(output, row: dict) -> None:
  with open(os.path.join(output, "results.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")


def write_csv(output, rows: Iterable[dict]) -> None:
  rows = list(rows)
  columns = list(dict.fromkeys(k for row in rows for k in row))
  path = os.path.join(output, "results.csv")
  with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(path + ".tmp", path)


def plot(output, rows: Iterable[dict]) -> str:
  """results.png: tokens/s and useful MFU against batch, a line for each
  configuration (size and whatever else the sweep varies) and implementation."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows = [r for r in rows if "error" not in r]
  varying = [f for f in SWEEP_FIELDS if f != "batch" and len({r.get(f) for r in rows}) > 1]
  keys = ["size", *[f for f in varying if f != "size"], "implementation"]
  figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  groups: dict[tuple, list[dict]] = {}
  for row in rows:
    groups.setdefault(tuple(row[k] for k in keys), []).append(row)
  for key, group in sorted(groups.items(), key=lambda kv: str(kv[0])):
    group.sort(key=lambda r: r["batch"])
    batches = [r["batch"] for r in group]
    style = "-o" if key[-1] == "lmjax" else "--s"
    label = " ".join(str(k) for k in key)
    left.plot(batches, [r["tokens_per_s"] for r in group], style, label=label)
    if all(r.get("useful_mfu") is not None for r in group):
      right.plot(batches, [100 * r["useful_mfu"] for r in group], style, label=label)
  for axis, title in ((left, "tokens/s"), (right, "useful MFU (%)")):
    axis.set_xscale("log", base=2)
    axis.set_xlabel("global batch")
    axis.set_title(title)
    axis.grid(alpha=0.3)
  left.legend(fontsize=7)
  device = rows[0].get("device", "") if rows else ""
  figure.suptitle(f"lmjax benchmark ({device})", fontsize=10)
  figure.tight_layout()
  path = os.path.join(output, "results.png")
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def prepare_output(output: str) -> str:
  """The output directory, made; UserError for a file or an unwritable place.
  Earlier results in it are replaced (a sweep's files belong together)."""
  if not output:
    raise UserError("--output is empty; name a directory")
  if paths.is_remote(output):
    raise UserError(f"--output={output}: the benchmark writes a local directory")
  path = os.path.abspath(os.path.expanduser(output))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"--output={output} is a file, not a directory")
  paths.check_writable(path)
  try:
    os.makedirs(path, exist_ok=True)
    for name in ("results.jsonl", "results.csv", "results.png"):
      if os.path.exists(os.path.join(path, name)):
        os.remove(os.path.join(path, name))
  except OSError as e:
    raise UserError(f"--output={output}: cannot write there ({e.strerror})") from None
  return path
