"""Three labelled tasks made from the built-in Austen corpus, as local tsv
files (text, label), for scoring fine-tuning where no task can be
downloaded:

  python -m experiments.local_tasks --output=DIR

  novels.tsv       which of the six novels a passage of three sentences
                   comes from (6 classes, 4,000 passages, ~70 words)
  speech.tsv       whether a sentence is spoken or narrated, its quotation
                   marks removed (2 classes, 3,000 sentences, 8-40 words)
  questions.tsv    whether a short sentence asks or tells, its last
                   punctuation mark removed (2 classes, 2,000 sentences,
                   4-15 words, a third of them questions)

Each file is split by lmjax's hash of the text (about 80/10/10). The same
files come out on every machine: the sampling is seeded.
"""

import gzip
import random
import re
from pathlib import Path

from lmjax import scripts
from lmjax.data import builtin

# The novels in the corpus's chapter order, and each one's number of chapters.
NOVELS = (("sense_and_sensibility", 50), ("pride_and_prejudice", 62), ("mansfield_park", 48),
          ("emma", 55), ("northanger_abbey", 31), ("persuasion", 24))
_QUOTES = re.compile("[\"\u201c\u201d]")


def chapters_by_novel() -> list[tuple[str, list[str]]]:
  """(novel, sentences of one chapter) for every chapter, in order."""
  with gzip.open(builtin.AUSTEN_FILE, "rt", encoding="utf-8") as f:
    chapters = [c.split("\n") for c in f.read().strip().split("\n\n")]
  names = [name for name, count in NOVELS for _ in range(count)]
  if len(names) != len(chapters):
    raise AssertionError(f"the built-in corpus has {len(chapters)} chapters, not {len(names)}")
  return list(zip(names, chapters, strict=True))


def novels(chapters, rng: random.Random, count: int = 4000) -> list[tuple[str, str]]:
  passages = [(" ".join(sentences[i:i + 3]), name) for name, sentences in chapters
              for i in range(0, len(sentences) - 2, 3)]
  return rng.sample(passages, count)


def speech(chapters, rng: random.Random, count: int = 3000) -> list[tuple[str, str]]:
  rows = []
  for _, sentences in chapters:
    for sentence in sentences:
      text = " ".join(_QUOTES.sub(" ", sentence).split())
      if 8 <= len(text.split()) <= 40:
        rows.append((text, "spoken" if _QUOTES.search(sentence) else "narrated"))
  return rng.sample(rows, count)


def questions(chapters, rng: random.Random, count: int = 2000) -> list[tuple[str, str]]:
  rows = {"question": [], "statement": []}
  for _, sentences in chapters:
    for sentence in sentences:
      text = " ".join(_QUOTES.sub(" ", sentence).split())
      if 4 <= len(text.split()) <= 15 and text[-1] in ".?":
        rows["question" if text.endswith("?") else "statement"].append(text[:-1])
  asked = [(t, "question") for t in rng.sample(rows["question"], count // 3)]
  told = [(t, "statement") for t in rng.sample(rows["statement"], count - len(asked))]
  return rng.sample(asked + told, count)


def write(path: Path, rows: list[tuple[str, str]]) -> None:
  path.write_text("text\tlabel\n" + "".join(f"{' '.join(t.split())}\t{label}\n"
                                            for t, label in rows), encoding="utf-8")


def main(argv: list[str]) -> None:
  args = scripts.parse(scripts.parser(__doc__, output="the three .tsv files"), argv)
  out = Path(args.output)
  out.mkdir(parents=True, exist_ok=True)
  chapters = chapters_by_novel()
  for name, make in (("novels", novels), ("speech", speech), ("questions", questions)):
    rows = make(chapters, random.Random(name))
    write(out / f"{name}.tsv", rows)
    labels = sorted({label for _, label in rows})
    print(f"{out / name}.tsv: {len(rows)} examples, {len(labels)} labels", flush=True)


if __name__ == "__main__":
  scripts.run(main)
