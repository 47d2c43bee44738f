"""Sentence embeddings from a trained workdir: nearest neighbours of a few
queries among a task's texts, and a 2-D picture of the texts by label.

  python examples/embeddings.py --workdir=runs/pretrain --task=rt_polarity \\
      --query="a moving, beautifully acted film" --query="dull and far too long" \\
      --output=runs/embeddings

embeds the texts two ways (the last layer's mean over the tokens, and its
[CLS] token), prints each query's nearest texts by cosine similarity (of
embeddings centred on the texts' mean), and
writes `embeddings.png` (each way's texts projected on their first two
principal components, coloured by label) and `neighbours.json`.
"""

import json
import os

import numpy as np

from lmjax import scripts
from lmjax.data import tasks
from lmjax.errors import UserError
from lmjax.runs import trained

plt = scripts.pyplot()


def parse(argv):
  parser = scripts.parser(__doc__, workdir=True, task=True,
                          output="embeddings.png and neighbours.json")
  parser.add_argument("--split", default="validation", choices=("train", "validation", "test"))
  parser.add_argument("--examples", type=int, default=500, help="texts of the split to embed")
  parser.add_argument("--query", action="append", default=[], help="a text to find neighbours of")
  parser.add_argument("--neighbours", type=int, default=3)
  args = scripts.parse(parser, argv)
  if args.examples < 2 or args.neighbours < 1:
    raise UserError("--examples must be at least 2 and --neighbours at least 1")
  if any(not query.strip() for query in args.query):
    raise UserError("--query must not be empty")
  return args


def normalized(x_NxD: np.ndarray) -> np.ndarray:
  return x_NxD / np.maximum(np.linalg.norm(x_NxD, axis=-1, keepdims=True), 1e-12)


def neighbours(queries_QxD, texts_NxD, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k most cosine-similar texts of each query: (indices, similarities)
  [Q, k]. Both are centred on the texts' mean first: a small encoder's
  embeddings share one large common direction, which would make every
  cosine near 1."""
  centre_D = texts_NxD.mean(0)
  similarity_QxN = normalized(queries_QxD - centre_D) @ normalized(texts_NxD - centre_D).T
  order_QxK = np.argsort(-similarity_QxN, axis=1)[:, :k]
  return order_QxK, np.take_along_axis(similarity_QxN, order_QxK, axis=1)


def projected(x_NxD: np.ndarray) -> np.ndarray:
  """The first two principal components of the centred embeddings, [N, 2]."""
  centred = x_NxD - x_NxD.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:2].T


def plot(ways: dict[str, np.ndarray], labels, names):
  fig, axes = plt.subplots(1, len(ways), figsize=(5 * len(ways), 4.5), squeeze=False)
  for ax, (way, x_NxD) in zip(axes[0], ways.items(), strict=True):
    points = projected(x_NxD)
    for index, name in enumerate(names):
      chosen = labels == index
      ax.scatter(points[chosen, 0], points[chosen, 1], s=8, alpha=0.6, label=name)
    ax.set(title=way, xlabel="first principal component", ylabel="second")
    ax.legend(fontsize=7)
  return fig


def main(argv: list[str]) -> dict:
  args = parse(argv)
  run = trained.load(args.workdir)
  task = tasks.task_of(args.task, text_fields=args.text_fields)
  if task.is_regression:
    raise UserError(f"{args.task} is a regression task; the picture colours classes")
  examples = tasks.load_split(task, args.split)
  keep = np.random.default_rng(0).permutation(len(examples))[:args.examples]
  texts = [examples.texts[i] for i in keep]
  mean, first = (x[-1] for x in run.features(texts))  # the last layer's
  ways = {"mean over tokens": mean, "[CLS]": first}
  found = {}
  if args.query:
    query_mean, query_first = (x[-1] for x in run.features([(q,) for q in args.query]))
    for way, queries in (("mean over tokens", query_mean), ("[CLS]", query_first)):
      order, similarity = neighbours(queries, ways[way], args.neighbours)
      found[way] = {query: [dict(text=" / ".join(texts[j]), similarity=round(float(s), 4))
                            for j, s in zip(row, sims, strict=True)]
                    for query, row, sims in zip(args.query, order, similarity, strict=True)}
      for query, hits in found[way].items():
        print(f"{way}: {query!r}")
        for hit in hits:
          print(f"  {hit['similarity']:.3f}  {hit['text'][:100]}")
  labels = None if examples.labels is None else examples.labels[keep]
  png = scripts.save_figure(plot(ways, labels if labels is not None else np.zeros(len(texts), int),
                                 task.labels if labels is not None else ["unlabelled"]),
                            args.output, "embeddings.png")
  with open(listed := os.path.join(args.output, "neighbours.json"), "w", encoding="utf-8") as f:
    json.dump(found, f, indent=1)
  print(f"{len(texts)} texts of {task.name} ({args.split}); wrote {png} and {listed}")
  return dict(ways=ways, neighbours=found)


if __name__ == "__main__":
  scripts.run(main)
