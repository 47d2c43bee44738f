"""Layer-wise probing: how much of a labelled task each layer's features
carry, for a trained encoder and for the same encoder with random weights.

  python examples/layer_probe.py --workdir=runs/pretrain --task=rt_polarity \\
      --output=runs/probe

fits a logistic regression on every layer's frozen features (the mean over
each text's tokens) of a sample of the task's training split, scores it on
its validation split, and writes `probe.png` (accuracy by layer, layer 0
being the embeddings) and `probe.md` (the table it prints).
"""

import os

import numpy as np

from lmjax import scripts
from lmjax.data import tasks
from lmjax.errors import UserError
from lmjax.runs import trained
from lmjax.train import baselines

plt = scripts.pyplot()


def parse(argv):
  parser = scripts.parser(__doc__, workdir=True, task=True, output="probe.png and probe.md")
  parser.add_argument("--train_examples", type=int, default=2000)
  parser.add_argument("--eval_examples", type=int, default=1000)
  parser.add_argument("--layers", default="all", help="all, or layers by number: 0,2,4")
  parser.add_argument("--seed", type=int, default=0, help="the sample's and random weights'")
  args = scripts.parse(parser, argv)
  if min(args.train_examples, args.eval_examples) < 2:
    raise UserError("--train_examples and --eval_examples must be at least 2")
  return args


def chosen_layers(spec: str, num_layers: int) -> list[int]:
  if spec == "all":
    return list(range(num_layers + 1))
  try:
    layers = sorted({int(part) for part in spec.split(",")})
  except ValueError:
    raise UserError(f"--layers={spec}: give all, or numbers such as 0,2") from None
  for layer in layers:
    if not 0 <= layer <= num_layers:
      raise UserError(f"--layers: layer {layer} does not exist; the encoder has layers 0 "
                      f"(the embeddings) to {num_layers}")
  return layers


def sample(task: tasks.Task, split: str, count: int, seed: int) -> tasks.Examples:
  examples = tasks.load_split(task, split)
  if examples.labels is None:
    raise UserError(f"{task.name}: its {split} split has no labels")
  keep = np.random.default_rng(seed).permutation(len(examples))[:count]
  return tasks.Examples([examples.texts[i] for i in keep], examples.labels[keep])


def probe(run: trained.Trained, train, evaluate, layers: list[int]) -> list[float]:
  """The probe's validation accuracy on each of `layers`."""
  train_x, eval_x = run.features(train.texts)[0], run.features(evaluate.texts)[0]
  return [baselines.linear_probe(train_x[i], train.labels, eval_x[i], evaluate.labels)
          for i in layers]


def plot(layers, scores: dict[str, list[float]], majority: float):
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, accuracy in scores.items():
    ax.plot(layers, accuracy, "o-", label=name)
  ax.axhline(majority, color="gray", linestyle="--", label="majority class")
  ax.set_xticks(layers)
  ax.set_xlabel("layer (0: embeddings)")
  ax.set_ylabel("probe accuracy (validation)")
  ax.legend()
  return fig


def main(argv: list[str]) -> dict:
  args = parse(argv)
  run = trained.load(args.workdir)
  layers = chosen_layers(args.layers, run.config.num_layers)
  task = tasks.task_of(args.task, text_fields=args.text_fields)
  if task.is_regression:
    raise UserError(f"{args.task} is a regression task; the probe needs classes")
  train = sample(task, "train", args.train_examples, args.seed)
  evaluate = sample(task, "validation", args.eval_examples, args.seed)
  majority = float(np.mean(evaluate.labels == np.bincount(train.labels).argmax()))
  scores = {f"trained (step {run.step})": probe(run, train, evaluate, layers),
            "random weights": probe(run.with_random_encoder(args.seed), train, evaluate,
                                    layers)}
  lines = ["| layer | " + " | ".join(scores) + " |", "|---" * (len(scores) + 1) + "|"]
  lines += [f"| {layer} | " + " | ".join(f"{s[i]:.4f}" for s in scores.values()) + " |"
            for i, layer in enumerate(layers)]
  lines.append(f"\n{task.name}: {len(train)} training and {len(evaluate)} validation "
               f"examples; majority class {majority:.4f}")
  png = scripts.save_figure(plot(layers, scores, majority), args.output, "probe.png")
  with open(table := os.path.join(args.output, "probe.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"wrote {png} and {table}")
  return dict(layers=layers, scores=scores, majority=majority)


if __name__ == "__main__":
  scripts.run(main)
