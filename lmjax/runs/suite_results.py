"""What a task suite leaves: per task, each start's main score over seeds
(median, lowest, highest) next to the majority class and TF-IDF; per start,
the average of its task medians (as the GLUE score averages tasks); as
results.json, results.md and results.png."""

import numpy as np

from lmjax.runs import series

BASELINES = (("majority", "majority class"), ("tfidf", "TF-IDF + linear model"))


def _split(summary: dict) -> str:
  """'test' when the task has a labelled test split, else 'eval'."""
  return "test" if f"test_{summary['main_metric']}" in summary else "eval"


def results(config, suite, done: dict[tuple[str, str, int], dict]) -> dict:
  """The suite's figures for every task whose runs are all done."""
  seeds = sorted({seed for _, _, seed in suite.runs})
  rows = []
  for task, source in suite.tasks.items():
    if not all((task, s, seed) in done for s in suite.starts for seed in seeds):
      continue
    first = done[task, next(iter(suite.starts)), seeds[0]]
    split, metric = _split(first), first["main_metric"]
    key = f"{split}_{metric}"
    starts = {}
    for start in suite.starts:
      runs = [dict(seed=seed, score=done[task, start, seed][key],
                   best_step=done[task, start, seed].get("best_step"),
                   at_majority=done[task, start, seed].get("at_majority_class", False))
              for seed in seeds]
      scores = np.array([r["score"] for r in runs], np.float64)
      starts[start] = dict(runs=runs, median=round(float(np.median(scores)), 5),
                           low=round(float(scores.min()), 5), high=round(float(scores.max()), 5))
    rows.append(dict(task=task, source=source, metric=metric,
                     split="test" if split == "test" else "validation",
                     train_examples=first.get("train_examples"), starts=starts,
                     baselines={name: first[f"{split}_{name}_{metric}"] for name, _ in BASELINES
                                if f"{split}_{name}_{metric}" in first}))
  average = {start: round(float(np.mean([r["starts"][start]["median"] for r in rows])), 5)
             for start in suite.starts} if rows else {}
  protocol = {k: config.finetune.train[k] for k in ("epochs", "steps", "batch_size",
                                                     "learning_rate", "schedule",
                                                     "warmup_fraction")}
  if protocol["learning_rate"] is None:
    protocol["learning_rate"] = "by the encoder's width"
  return dict(tasks=rows, average=average, starts=dict(suite.starts), seeds=len(seeds),
              protocol=protocol, complete=len(rows) == len(suite.tasks))


def markdown(results: dict) -> str:
  """results.md: a table per task, then the average over tasks."""
  seeds = results["seeds"]
  protocol = ", ".join(f"{k} {v}" for k, v in results["protocol"].items())
  lines = [f"# Task suite: {len(results['tasks'])} tasks, {seeds} seeds", "",
           f"Fine-tuning protocol: {protocol}. Each cell is the median over seeds, "
           "(lowest-highest) beside it.", ""]
  for row in results["tasks"]:
    lines += [f"## {row['task']} ({row['split']} {row['metric']}, "
              f"{row['train_examples']} training examples)", "",
              "| start | median | lowest-highest | seeds |", "|---|---|---|---|"]
    for start, figures in row["starts"].items():
      each = ", ".join(f"{r['score']:.4f}" for r in figures["runs"])
      lines.append(f"| {start} | {figures['median']:.4f} | {figures['low']:.4f}-"
                   f"{figures['high']:.4f} | {each} |")
    for name, label in BASELINES:
      if name in row["baselines"]:
        lines.append(f"| {label} | {row['baselines'][name]:.4f} | | |")
    lines.append("")
  if results["average"]:
    names = [r["task"] for r in results["tasks"]]
    lines += ["## Average over tasks", "", "| start | average | " + " | ".join(names) + " |",
              "|---" * (len(names) + 2) + "|"]
    for start, value in results["average"].items():
      cells = [f"{r['starts'][start]['median']:.4f}" for r in results["tasks"]]
      lines.append(f"| {start} | **{value:.4f}** | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(results: dict) -> bytes:
  """results.png: per task, each start's seeds as dots and its median as a
  bar, the majority class as a dash."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  rows, starts = results["tasks"], list(results["starts"])
  width = 0.8 / len(starts)
  figure, axis = plt.subplots(figsize=(1.2 * len(rows) * len(starts) + 3, 4))
  for j, start in enumerate(starts):
    xs = [i + (j - (len(starts) - 1) / 2) * width for i in range(len(rows))]
    axis.bar(xs, [r["starts"][start]["median"] for r in rows], width * 0.9, alpha=0.6,
             label=start)
    for x, r in zip(xs, rows, strict=True):
      scores = [run["score"] for run in r["starts"][start]["runs"]]
      axis.plot([x] * len(scores), scores, "k.", alpha=0.8)
  for i, r in enumerate(rows):
    if "majority" in r["baselines"]:
      axis.plot([i - 0.45, i + 0.45], [r["baselines"]["majority"]] * 2, "r--", lw=1)
  axis.set_xticks(range(len(rows)), [f"{r['task']}\n{r['metric']}" for r in rows],
                  fontsize=8)
  axis.set_ylabel("main metric (median of seeds; red: majority class)")
  axis.set_title(f"task suite, {results['seeds']} seeds", fontsize=10)
  axis.grid(axis="y", alpha=0.3)
  axis.legend(fontsize=8)
  return series.png(figure)


def write(workdir, results: dict) -> None:
  series.write_results(workdir, results, markdown(results), plot(results))
