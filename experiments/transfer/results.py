"""What a transfer experiment leaves: its runs' figures gathered per variant
(mean and standard deviation over seeds), as results.json, a Markdown table
(results.md) and a plot (results.png)."""

import numpy as np

from lmjax.runs import series

# Pretraining figures shown next to the task's (the final evaluation's).
PRETRAINING_KEYS = ("eval_mlm_accuracy", "eval_probe_accuracy", "eval_nsp_accuracy",
                    "eval_cp_accuracy")
_BASELINES = (("majority", "majority class"), ("tfidf", "TF-IDF + linear model"))


def _scored_split(summary: dict) -> str:
  """'test' when the task has a test split, else 'eval' (validation)."""
  return "test" if f"test_{summary['main_metric']}" in summary else "eval"


def _metric_keys(summary: dict) -> list[str]:
  """The model's scores in a fine-tuning summary, main metric first: those of
  the scored split, then the validation split's main metric."""
  split, main = _scored_split(summary), summary["main_metric"]
  others = [k for k, v in summary.items() if k.startswith(f"{split}_")
            and isinstance(v, float) and k not in (f"{split}_loss", f"{split}_{main}")
            and not k.startswith((f"{split}_majority_", f"{split}_tfidf_"))]
  keys = [f"{split}_{main}", *others]
  return keys + ([f"eval_{main}"] if split == "test" else [])


def results(config, names: list[str], pretrained: dict[str, dict],
            finetuned: dict[tuple[str, int], dict]) -> dict:
  """The experiment's figures: per variant its pretraining's final
  evaluation, each seed's scores, and their mean and standard deviation."""
  first = next(iter(finetuned.values()))
  keys, split = _metric_keys(first), _scored_split(first)
  variants = []
  for name in names:
    runs = [dict(seed=seed, best_step=s["best_step"], **{k: s[k] for k in keys})
            for (n, seed), s in finetuned.items() if n == name]
    table = np.array([[r[k] for k in keys] for r in runs], dtype=np.float64)
    spread = table.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(keys))
    pre = pretrained.get(name)
    variants.append(dict(
        variant=name,
        pretraining=None if pre is None else
        dict(step=pre["step"], **{k: pre[k] for k in PRETRAINING_KEYS if k in pre}),
        runs=runs,
        mean={k: round(float(v), 5) for k, v in zip(keys, table.mean(0), strict=True)},
        std={k: round(float(v), 5) for k, v in zip(keys, spread, strict=True)}))
  metrics = [k.removeprefix(f"{split}_") for k in keys if k.startswith(f"{split}_")]
  baselines = {name: {f"{split}_{m}": first[f"{split}_{name}_{m}"] for m in metrics
                      if f"{split}_{name}_{m}" in first}
               for name, _ in _BASELINES}
  return dict(task=config.task, corpus=config.corpus or f"task:{config.task}",
              main_metric=first["main_metric"], split="test" if split == "test" else
              "validation", seeds=config.seeds, metrics=keys, variants=variants,
              baselines=baselines)


def _label(key: str) -> str:
  split, metric = key.split("_", 1)
  return f"{'validation' if split == 'eval' else split} {metric}"


def markdown(results: dict) -> str:
  """results.md: a row per variant (mean ± standard deviation over seeds),
  then the baselines' rows."""
  keys = results["metrics"]
  pre_keys = [k for k in PRETRAINING_KEYS
              if any((v["pretraining"] or {}).get(k) is not None for v in results["variants"])]
  header = [*(_label(k) for k in keys),
            *(f"pretraining {k.removeprefix('eval_').replace('_', ' ')}" for k in pre_keys)]
  lines = [f"# {results['corpus']} -> {results['task']}", "",
           f"Fine-tuned with {results['seeds']} seeds: mean ± standard deviation. "
           "Pretraining figures are its final evaluation.", "",
           "| variant | " + " | ".join(header) + " |",
           "|---" * (len(header) + 1) + "|"]
  for v in results["variants"]:
    cells = [f"{v['mean'][k]:.4f} ± {v['std'][k]:.4f}" for k in keys]
    cells += [f"{v['pretraining'][k]:.4f}" if v["pretraining"] and k in v["pretraining"]
              else "–" for k in pre_keys]
    name = v["variant"]
    if v["pretraining"] is None:  # random or modernbert_random
      name = f"{name.removesuffix('random').replace('_', ' ')}random weights"
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  for name, label in _BASELINES:
    scores = results["baselines"].get(name) or {}
    if scores:
      cells = [f"{scores[k]:.4f}" if k in scores else "–" for k in keys]
      lines.append(f"| {label} | " + " | ".join(cells + ["–"] * len(pre_keys)) + " |")
  return "\n".join(lines) + "\n"


def plot(results: dict) -> bytes:
  """results.png: the main metric per variant (each seed a dot, the mean a
  bar with its standard deviation), the baselines as lines."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  key = results["metrics"][0]
  figure, axis = plt.subplots(figsize=(1.4 * len(results["variants"]) + 3, 4))
  for x, v in enumerate(results["variants"]):
    axis.bar(x, v["mean"][key], yerr=v["std"][key], color="tab:blue", alpha=0.6, capsize=4)
    axis.plot([x] * len(v["runs"]), [r[key] for r in v["runs"]], "k.", alpha=0.8)
  values = [r[key] for v in results["variants"] for r in v["runs"]]
  for (name, label), style in zip(_BASELINES, ("--", ":"), strict=True):
    if key in results["baselines"].get(name, {}):
      value = results["baselines"][name][key]
      values.append(value)
      axis.axhline(value, color="tab:red", linestyle=style, label=label)
  axis.set_xticks(range(len(results["variants"])),
                  [v["variant"] for v in results["variants"]])
  low, high = min(values), max(values)
  axis.set_ylim(low - 0.15 * (high - low + 1e-3), high + 0.15 * (high - low + 1e-3))
  axis.set_ylabel(_label(key))
  axis.set_title(f"{results['corpus']} -> {results['task']} ({results['seeds']} seeds)",
                 fontsize=10)
  axis.grid(axis="y", alpha=0.3)
  axis.legend(fontsize=8)
  return series.png(figure)


def write(workdir, results: dict) -> None:
  series.write_results(workdir, results, markdown(results), plot(results))
