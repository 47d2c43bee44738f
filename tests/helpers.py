"""What several test modules share that is not a fixture: the config
files, a synthetic review task, and a small WordPiece vocabulary."""

import importlib.util
import random
import struct
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.extend
import ml_collections
import numpy as np

from lmjax import config_sections

ROOT = Path(__file__).parents[1]


def config_module(name: str):
  """configs/NAME.py as a module."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


finetune_config, pretrain_config = config_module("finetune"), config_module("pretrain")


def pretraining(**data):
  """The default pretraining config, with `data` fields set."""
  config = pretrain_config.get_config()
  config.data.update(data)
  return config


def train_config(**overrides):
  """A train section: the configs' optimizer at 1e-3, 100 steps, batch 8."""
  return ml_collections.ConfigDict({
      **config_sections.optimizer(learning_rate=1e-3), "steps": 100, "warmup_steps": 10,
      "batch_size": 8, **overrides})

GOOD = ["superb", "moving", "delightful", "sharp", "warm", "brilliant"]
BAD = ["dull", "tedious", "clumsy", "hollow", "stale", "grating"]
FILLER = ["the", "film", "plot", "cast", "story", "ending", "is", "feels", "rather",
          "quite", "and", "its", "score", "pacing"]


def review(rng: random.Random, positive: bool) -> str:
  words = rng.sample(FILLER, 6) + [rng.choice(GOOD if positive else BAD)]
  rng.shuffle(words)
  return " ".join(words)


def review_corpus(path: Path, documents: int, sentences: int, seed: int) -> Path:
  """A corpus in BERT's format: `documents` of `sentences` reviews each."""
  rng = random.Random(seed)
  path.write_text("\n\n".join("\n".join(review(rng, rng.random() < 0.5) + "."
                                        for _ in range(sentences))
                              for _ in range(documents)) + "\n")
  return path


def task_config(source, **train):
  """The fine-tuning config for a tsv task at `source`, small and quick."""
  c = finetune_config.get_config()
  c.task.source = f"tsv:{source}"
  c.task.max_seq_length = 24
  c.train.update({**dict(batch_size=16, steps=120, learning_rate=1e-3, log_every=20,
                         eval_every=40), **train})
  return c


# Texts that WordPiece's corner cases meet, and a corpus to learn a vocabulary from.
TEXTS = [
    "Hello, World! It's 3:45pm on 2026-11-29.",
    "Café crème, naïve façade, Ångström, résumé and the ÉCOLE normale.",
    "中文字符 mixed with English: 日本語のテキスト and 한국어.",
    "Punctuation!!! (brackets) [square] {curly} \"quotes\" 'single' --- ... ;:?",
    "Numbers 1234567890 3.14159 1,000,000 and 42nd, 7th.",
    "antidisestablishmentarianism supercalifragilisticexpialidocious pneumonoultra",
    "The literal text [MASK] and [CLS] [SEP] [PAD] [UNK] in a sentence.",
    "tabs\tand\nnewlines and  double  spaces\u00a0and a zero\u200bwidth space",
    "emoji 🙂 and symbols © ® ™ € £ ¥ §",
    "",
]
CORPUS = [t for t in TEXTS if t] + [
    "the quick brown fox jumps over the lazy dog. The Quick Brown Fox!",
    "Unbelievable results were reported in the preliminary findings of researchers.",
    "Natural language processing with transformers: encoders, decoders, attention.",
] * 20


def build_vocab(path, lowercase: bool, corpus: Sequence[str] = tuple(CORPUS)) -> list[str]:
  """A few hundred pieces trained on `corpus`, BERT's specials included."""
  from tokenizers import BertWordPieceTokenizer  # pylint: disable=import-outside-toplevel
  trainer = BertWordPieceTokenizer(lowercase=lowercase, strip_accents=lowercase)
  trainer.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                              special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
  pieces = [p for p, _ in sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])]
  pieces = pieces[:1] + [f"[unused{i}]" for i in range(3)] + pieces[1:]  # as BERT's
  path.write_text("\n".join(pieces) + "\n")
  return pieces


def dot_flops(jaxpr) -> int:
  """Sums 2 * (output size) * (contracted size) over every dot_general of
  a jaxpr, those of its sub-jaxprs (scans, remat) included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      contracted = int(np.prod([lhs[i] for i in lhs_contract]))
      total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * contracted
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += dot_flops(sub)
  return total


def event_scalars(directory) -> dict[str, set[int]]:
  """tag -> steps of the scalars in the TensorBoard event files under it."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  tags: dict[str, set[int]] = {}
  for path in directory.glob("events.out.tfevents.*"):
    data, at = path.read_bytes(), 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        tags.setdefault(value.tag, set()).add(event.step)
  return tags
