"""Attention maps: what every head of every layer attends to, for one text or
a pair, in a trained workdir (pretraining or fine-tuning; BERT or ModernBERT).

  python examples/attention_maps.py --workdir=runs/pretrain \\
      --text="She was the youngest of the two daughters." --output=runs/attention

writes `attention.png` (a row per layer, a column per head: queries down,
keys across, each row of a map a distribution over the keys) and
`entropy.png` (each head's attention entropy in bits, averaged over the
tokens, by layer: low entropy is a head that looks at few tokens; the
dashed line is uniform attention over the text), and prints the entropies.
"""

import numpy as np

from lmjax import scripts
from lmjax.data import tasks
from lmjax.errors import UserError
from lmjax.model.internals import apply_with_internals
from lmjax.runs import trained

plt = scripts.pyplot()


def parse(argv):
  parser = scripts.parser(__doc__, workdir=True, output="attention.png and entropy.png")
  parser.add_argument("--text", required=True, help="the text (the first of a pair)")
  parser.add_argument("--pair", default=None, help="a second text: the pair's")
  args = scripts.parse(parser, argv)
  if not args.text.strip() or (args.pair is not None and not args.pair.strip()):
    raise UserError("--text and --pair must not be empty")
  return args


def encode(run: trained.Trained, texts: tuple[str, ...]) -> dict:
  """[CLS] text [SEP] (pair [SEP]) as a batch of one row, unpadded."""
  length = sum(len(ids) for ids in run.tokenizer.encode(texts)) + len(texts) + 1
  if length > run.config.max_position:
    raise UserError(f"the text is {length} tokens with [CLS] and [SEP]; the model has "
                    f"{run.config.max_position} positions")
  return tasks.encode(tasks.Examples([texts], None), run.tokenizer, length).arrays


def entropy_bits(probs_LxNxQxK: np.ndarray) -> np.ndarray:
  """Each head's mean over queries of its attention entropy: [layers, heads]."""
  logs = np.log2(np.where(probs_LxNxQxK > 0, probs_LxNxQxK, 1.0))
  return -(probs_LxNxQxK * logs).sum(-1).mean(-1)


def plot_maps(probs_LxNxQxK: np.ndarray, tokens: list[str]):
  layers, heads, length = probs_LxNxQxK.shape[:3]
  size = max(2.0, 0.18 * length)
  fig, axes = plt.subplots(layers, heads, figsize=(size * heads, size * layers),
                           squeeze=False)
  for layer in range(layers):
    for head in range(heads):
      ax = axes[layer, head]
      ax.imshow(probs_LxNxQxK[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
      ax.set_title(f"layer {layer}, head {head}", fontsize=8)
      ticks = range(length) if length <= 48 else []
      ax.set_xticks(ticks, [tokens[i] for i in ticks], rotation=90, fontsize=6)
      ax.set_yticks(ticks, [tokens[i] for i in ticks], fontsize=6)
  return fig


def plot_entropy(entropy_LxN: np.ndarray, length: int):
  fig, ax = plt.subplots(figsize=(6, 4))
  layers, heads = entropy_LxN.shape
  for head in range(heads):
    ax.plot(range(layers), entropy_LxN[:, head], "o-", label=f"head {head}")
  ax.axhline(np.log2(length), color="gray", linestyle="--", label="uniform")
  ax.set_xticks(range(layers))
  ax.set_xlabel("layer")
  ax.set_ylabel("attention entropy (bits)")
  ax.legend(fontsize=7)
  return fig


def main(argv: list[str]) -> dict:
  args = parse(argv)
  run = trained.load(args.workdir)
  texts = (args.text,) if args.pair is None else (args.text, args.pair)
  batch = encode(run, texts)
  encoder, params = run.encoder()
  _, internals = apply_with_internals(encoder, {"params": params},
                                      *(batch[k] for k in encoder.INPUTS))
  probs = np.asarray(internals.attention_probs[:, 0], np.float32)  # [layers, N, L, L]
  tokens = run.tokenizer.pieces(batch["input_ids"][0])
  entropy = entropy_bits(probs)
  maps = scripts.save_figure(plot_maps(probs, tokens), args.output, "attention.png")
  curve = scripts.save_figure(plot_entropy(entropy, len(tokens)), args.output, "entropy.png")
  print(f"{len(tokens)} tokens: {' '.join(tokens)}")
  for layer, row in enumerate(entropy):
    print(f"layer {layer}: entropy by head " + " ".join(f"{e:.2f}" for e in row) + " bits")
  print(f"wrote {maps} and {curve}")
  return dict(tokens=tokens, probs=probs, entropy=entropy)


if __name__ == "__main__":
  scripts.run(main)
