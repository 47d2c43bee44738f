"""Prepared data: the Beam pipeline makes exactly the in-process shards, the
loader streams them, and every bad input or fault is one line."""

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import pretraining

from lmjax import prepare
from lmjax.data import builtin, pretrain_input, shards
from lmjax.data.shard_writing import Settings, prepare_in_process
from lmjax.errors import UserError
from lmjax.preview import batch_statistics

ROOT = Path(__file__).parents[1]
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
WORDS = ["the", "river", "ran", "past", "a", "mill", "where", "three", "sisters", "kept",
         "bees", "and", "argued", "about", "letters", "sent", "from", "town", "each",
         "winter", "while", "snow", "fell", "on", "quiet", "roads"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Three files of BERT-format text, 60 documents, one undecodable line."""
  rng = random.Random(0)
  directory = tmp_path_factory.mktemp("corpus")
  for f in range(3):
    docs = ["\n".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 14))).capitalize() + "."
                      for _ in range(rng.randint(2, 9))) for _ in range(20)]
    data = "\n\n".join(docs).encode() + (b"\n\xff\xfe bad bytes\n" if f == 1 else b"\n")
    (directory / f"part-{f}.txt").write_bytes(data)
  return f"text:{directory}/part-*.txt"


def settings(**changes):
  values = dict(tokenizer_files={"tokenizer.model": builtin.TOKENIZER_FILE.read_bytes()},
                max_seq_length=32, short_seq_prob=0.1, seed=5, num_shards=3)
  return Settings(**{**values, **changes})


def all_pairs(directory, split):
  pairs = shards.PreparedPairs(directory, split)
  return [(p["tokens"].tolist(), p["b_start"], p["is_random_next"])
          for p in (pairs[i] for i in range(len(pairs)))]


@pytest.fixture(scope="module")
def beam_dir(corpus, tmp_path_factory):
  output = tmp_path_factory.mktemp("beam") / "prepared"
  summary = prepare.run(corpus, str(output), settings(), IN_MEMORY)
  return output, summary


def test_beam_makes_exactly_the_in_process_shards(corpus, beam_dir, tmp_path):
  output, summary = beam_dir
  prepare_in_process(corpus, settings(), tmp_path / "local")
  beam_meta, local_meta = shards.check(output), shards.check(tmp_path / "local")
  assert beam_meta.splits.keys() == local_meta.splits.keys() == {"train", "validation"}
  for split in ("train", "validation"):
    assert beam_meta.counts(split) == local_meta.counts(split)
    assert [s["pairs"] for s in beam_meta.splits[split]["shards"]] == \
        [s["pairs"] for s in local_meta.splits[split]["shards"]]
    assert all_pairs(output, split) == all_pairs(tmp_path / "local", split)
  assert summary["train"]["documents"] + summary["validation"]["documents"] == 60
  assert summary["undecodable_lines"] == 1 and summary["text_mb"] > 0
  assert sorted(p.name for p in output.iterdir()) == ["metadata.json"] + [
      shards.shard_name(s, i, 3) for s in ("train", "validation") for i in range(3)]
  assert not list(output.parent.glob("*.tmp-*"))


def test_one_shard_is_the_whole_corpus_pairs(corpus, tmp_path):
  """With one shard, prepared pairs are those of the whole corpus in order."""
  from lmjax.data import instances, shard_writing, sources  # pylint: disable=import-outside-toplevel
  from lmjax.data.tokenization import Tokenizer  # pylint: disable=import-outside-toplevel
  prepare_in_process(corpus, settings(num_shards=1), tmp_path / "one")
  tokenizer = Tokenizer.load(builtin.TOKENIZER_FILE)
  documents = [shard_writing.tokenize(d, tokenizer)
               for d in sources.load_corpus(corpus, "train").documents]
  expected = [(t.tolist(), b, r) for t, b, r in instances.document_pairs(
      [d for d in documents if d], 32, 0.1, seed=5)]
  assert all_pairs(tmp_path / "one", "train") == expected


def test_training_streams_a_prepared_directory(beam_dir):
  output, _ = beam_dir
  config = pretraining(source=f"prepared:{output}", max_seq_length=32,
                           max_predictions_per_seq=5)
  dataset, _, info = pretrain_input.pretraining_input(config.data, 16, seed=0)
  assert info["pairs"] == shards.Metadata.read(output).counts("train")["pairs"]
  stats = batch_statistics([dataset[k] for k in range(40)])
  assert 0.14 < stats["predicted_fraction"] < 0.16
  assert 0.35 < stats["nsp_random_next_rate"] < 0.65
  assert stats["max_sequence_length"] <= 32
  shares = [pretrain_input.pretraining_input(config.data, 16, seed=0, process_index=p,
                                     process_count=2)[0][7] for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([s["input_ids"] for s in shares]),
                                dataset[7]["input_ids"])


def test_a_prepared_directory_that_does_not_fit_the_config_is_one_line(beam_dir):
  output, _ = beam_dir
  config = pretraining(source=f"prepared:{output}", max_seq_length=64)
  with pytest.raises(UserError, match="max_seq_length 32, but the config has .* "
                                      "max_seq_length 64") as e:
    pretrain_input.pretraining_input(config.data, 16, seed=0)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage,message", [
    ("metadata", "no metadata.json (not a prepared directory"),
    ("truncate", "bytes, its metadata says"),
    ("remove", "missing shard"),
    ("foreign", "records, its metadata says"),
    ("garbage_metadata", "not lmjax's prepared-data metadata"),
])
def test_a_damaged_directory_is_one_line_naming_the_file(beam_dir, tmp_path, damage,
                                                         message):
  directory = tmp_path / "copy"
  shutil.copytree(beam_dir[0], directory)
  shard = directory / shards.shard_name("train", 1, 3)
  if damage == "metadata":
    (directory / "metadata.json").unlink()
  elif damage == "truncate":
    shard.write_bytes(shard.read_bytes()[:-100])
  elif damage == "remove":
    shard.unlink()
  elif damage == "foreign":
    shards.write_shard(shard, [b"not a pair"] * 3)
  else:
    (directory / "metadata.json").write_text('{"format": "something else"}')
  with pytest.raises(UserError, match=re.escape(message)) as e:
    shards.PreparedPairs(directory, "train")
  assert "\n" not in str(e.value)


def test_prepare_refuses_a_non_empty_output_and_leaves_it_alone(corpus, beam_dir, tmp_path):
  output, _ = beam_dir
  before = {p.name: p.read_bytes() for p in output.iterdir()}
  with pytest.raises(UserError, match="is not empty; use --overwrite"):
    prepare.run(corpus, str(output), settings(seed=9), IN_MEMORY)
  assert {p.name: p.read_bytes() for p in output.iterdir()} == before
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("keep")
  summary = prepare.run(corpus, str(other), settings(num_shards=1), IN_MEMORY,
                        overwrite=True)
  assert summary["train"]["pairs"] > 0 and not (other / "notes.txt").exists()
  assert shards.check(other).seed == 5


def test_an_interrupted_prepare_leaves_nothing_that_looks_complete(corpus, tmp_path,
                                                                  monkeypatch):
  def fail(*args):
    raise KeyboardInterrupt
  monkeypatch.setattr(prepare, "_finish", fail)
  with pytest.raises(KeyboardInterrupt):
    prepare.run(corpus, str(tmp_path / "out"), settings(), IN_MEMORY)
  assert list(tmp_path.iterdir()) == []
  # A killed prepare leaves OUT.tmp-PID (nothing that looks prepared); the
  # next one removes it once that process is gone.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  (tmp_path / f"out.tmp-{dead}").mkdir()
  (tmp_path / f"out.tmp-{os.getpid()}x").mkdir()  # not a pid: left alone
  monkeypatch.undo()
  prepare.run(corpus, str(tmp_path / "out"), settings(num_shards=1), IN_MEMORY)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out", f"out.tmp-{os.getpid()}x"]


def test_bad_input_is_one_line_with_status_2(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n")
  (tmp_path / "empty.model").write_bytes(b"")
  cases = [
      ([f"--source=text:{empty}"], "empty corpus"),
      ([f"--source=text:{tmp_path}/none-*.txt"], "no file matches"),
      (["--source=austen", "--max_seq_lenght=64"], "unknown flag --max_seq_lenght"),
      (["--source=austen", "--num_shards=0"], "num_shards must be at least 1"),
      (["--source=austen", f"--tokenizer={tmp_path}/no.model"], "tokenizer not found"),
      (["--source=austen", f"--tokenizer={tmp_path / 'empty.model'}"],
       "not a sentencepiece model (empty file)"),
      ([f"--source=prepared:{tmp_path}"], "a prepared directory holds token ids, not text"),
      (["--source=austen", "--runner=NoSuchRunner"], "Unexpected pipeline runner"),
  ]
  for args, message in cases:
    done = subprocess.run(
        [sys.executable, "-m", "lmjax.prepare", f"--output={tmp_path / 'out'}",
         *args, *IN_MEMORY], capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], \
        (args, done.stderr[-1500:])
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.tmp-*"))
  done = subprocess.run([sys.executable, "-m", "lmjax.prepare", "--source=austen",
                         "--output=/proc/no/out", *IN_MEMORY], capture_output=True, text=True,
                        cwd=ROOT, check=False)
  assert done.returncode == 2
  assert done.stderr.strip() == "error: /proc/no/out: cannot write there (No such file or " \
      "directory)"


def test_beam_reads_a_tfds_source_as_the_in_process_path_does(tmp_path):
  """The built-in corpus through tfds: both splits, the same pairs."""
  data_dir = str(tmp_path / "tfds")
  prepare.run("austen", str(tmp_path / "beam"), settings(num_shards=2, max_seq_length=64),
              IN_MEMORY, data_dir=data_dir)
  prepare_in_process("austen", settings(num_shards=2, max_seq_length=64), tmp_path / "local",
                     data_dir=data_dir)
  for split in ("train", "validation"):
    assert all_pairs(tmp_path / "beam", split) == all_pairs(tmp_path / "local", split)
  assert shards.check(tmp_path / "beam").counts("train")["documents"] == 253


def test_the_command_shows_its_own_lines_only(corpus, tmp_path):
  """Beam's worker processes start and exit with INFO and WARNING notices;
  the console shows lmjax's lines unless --verbosity asks for theirs."""
  done = subprocess.run([sys.executable, "-m", "lmjax.prepare", f"--source={corpus}",
                         f"--output={tmp_path / 'out'}", "--num_shards=2",
                         "--direct_num_workers=2"], capture_output=True, text=True,
                        check=False, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stderr == ""
  lines = done.stdout.splitlines()
  assert all(line.startswith(("read ", "prepared ", "{")) for line in lines), lines
  verbose = subprocess.run([sys.executable, "-m", "lmjax.prepare", f"--source={corpus}",
                            f"--output={tmp_path / 'again'}", "--num_shards=2",
                            "--direct_num_workers=2", "--verbosity=0"],
                           capture_output=True, text=True, check=False, timeout=300)
  assert verbose.returncode == 0 and "Python sdk harness exiting" in verbose.stderr
