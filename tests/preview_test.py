"""The preview command end to end, on a local corpus the tokenizer never saw."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmjax.data import builtin

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  import os  # pylint: disable=import-outside-toplevel
  return dict(os.environ, TFDS_DATA_DIR=str(tmp_path_factory.mktemp("tfds")),
              LMJAX_CACHE=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
  """Film reviews, eight to a document, with one line of bad bytes."""
  with gzip.open(builtin.RT_POLARITY_FILE, "rt") as f:
    texts = [line.rstrip("\n").split("\t", 1)[1] for line in f][:6000]
  path = tmp_path_factory.mktemp("corpus") / "reviews.txt"
  with open(path, "wb") as f:
    for i in range(0, len(texts), 8):
      f.write("\n".join(texts[i:i + 8]).encode() + b"\n\n")
    f.write(b"\xff\xfe\xfd not utf-8\n")
  return path


def preview(env, *args):
  return subprocess.run([sys.executable, "-m", "lmjax.preview",
                         f"--config={ROOT}/configs/pretrain.py", *args],
                        capture_output=True, text=True, env=env, cwd=ROOT, check=False)


@pytest.mark.slow
def test_preview_statistics_on_an_unseen_local_corpus(env, reviews):
  run = preview(env, f"--config.data.source=text:{reviews}", "--num_batches=180",
                "--config.train.batch_size=32", "--num_examples=2")
  assert run.returncode == 0, run.stderr
  lines = run.stdout.strip().splitlines()
  assert "[MASK]<" in run.stdout and "[CLS]" in run.stdout
  stats = json.loads(lines[-1])
  assert stats["predicted_positions"] >= 100_000 or stats["sequences"] == 180 * 32
  assert abs(stats["predicted_fraction"] - 0.15) < 0.01
  for share, want in (("mask_share", 0.8), ("random_share", 0.1), ("kept_share", 0.1)):
    assert abs(stats[share] - want) < 0.01, share
  assert abs(stats["nsp_random_next_rate"] - 0.5) < 0.02
  assert stats["special_tokens_predicted"] == 0
  assert stats["max_sequence_length"] <= 128
  assert stats["undecodable_lines_skipped"] == 1
  assert stats["sequences_per_s"] > 0


@pytest.mark.parametrize("args,message", [
    (["--config.data.source=text:/no/such/file.txt"], "no such file"),
    (["--config.data.source=tfds:no_such_dataset_xyz"], "unknown dataset"),
    (["--config.data.bogus=1"], "unknown config field 'data.bogus'"),
    (["--config.data.max_seq_lenght=64"],
     "unknown config field 'data.max_seq_lenght' (did you mean 'data.max_seq_length'?)"),
    (["--config.train.batch_size=0"], "config.train.batch_size must be at least 1, got 0"),
    (["--num_batches=-3"], "flag --num_batches=-3: -3 is not a positive integer"),
    (["--config=configs/nope.py"], "--config=configs/nope.py: no such config file"),
    (["--config=configs/pretrain.py:huge"],
     "--config=configs/pretrain.py:huge: ValueError: unknown pretrain config variant 'huge'"),
    (["--config.data.max_seq_length=abc"], "max_seq_length"),
    (["--config.data.masked_lm_prob=2.0"], "masked_lm_prob"),
    (["--config.data.tokenizer=/no/such.model"], "tokenizer not found"),
])
def test_preview_user_errors_are_one_line(env, args, message):
  run = preview(env, *args, "--num_batches=1")
  assert run.returncode == 2, run.stderr
  assert message in run.stderr
  assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_preview_empty_corpus_is_an_error(env, tmp_path):
  (tmp_path / "empty.txt").write_text("")
  run = preview(env, f"--config.data.source=text:{tmp_path}/empty.txt", "--num_batches=1")
  assert run.returncode == 2 and "empty corpus" in run.stderr
