"""The tokenizer: special ids, training, word starts, the shipped model."""

import subprocess
import sys

import numpy as np
import pytest

from lmjax.data import builtin
from lmjax.data import tokenization as tok
from lmjax.errors import UserError


def test_builtin_tokenizer_has_fixed_special_ids():
  t = tok.Tokenizer.load(builtin.TOKENIZER_FILE)
  assert t.vocab_size == 8000
  assert t.pieces(range(5)) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  ids = t.encode(["Mr. Darcy walked to Pemberley."])[0]
  assert ids.dtype == np.int32 and (ids >= tok.NUM_SPECIAL).all()
  assert t.decode(ids) == "Mr. Darcy walked to Pemberley."


def test_special_token_strings_in_text_are_not_special():
  t = tok.Tokenizer.load(builtin.TOKENIZER_FILE)
  ids = t.encode(["[MASK] [CLS] [SEP] [PAD]"])[0]
  assert not np.isin(ids, [tok.PAD_ID, tok.CLS_ID, tok.SEP_ID, tok.MASK_ID]).any()


def test_word_starts_mark_the_first_piece_of_each_word():
  t = tok.Tokenizer.load(builtin.TOKENIZER_FILE)
  ids = t.encode(["unaccountably"])[0]
  assert len(ids) > 1
  starts = t.word_starts(ids)
  assert starts[0] and not starts[1:].any()
  assert t.word_starts(np.arange(5)).all()  # special tokens stand alone


def test_train_and_load(tmp_path):
  sentences = [f"sentence number {i} speaks of {w}" for i, w in
               enumerate(["apples", "pears", "plums", "figs"] * 50)]
  out = tmp_path / "m.model"
  lines = []
  trained = tok.train(sentences, 40, out, progress=lines.append)
  loaded = tok.Tokenizer.load(out)
  assert loaded.fingerprint == trained.fingerprint
  assert loaded.pieces(range(5))[4] == "[MASK]"
  assert any("wrote" in line for line in lines)
  with pytest.raises(UserError, match="no text"):
    tok.train(["", "  "], 60, out)
  largest = tok.train(sentences, 5000, tmp_path / "largest.model", at_most=True).vocab_size
  (tmp_path / "largest.model").unlink()
  with pytest.raises(UserError, match=f"200 sentences are too small a text for 5,000 pieces: "
                                      f"at most {largest} \\(vocab_size={largest}\\)$"):
    tok.train(sentences, 5000, tmp_path / "too_big.model")
  assert not (tmp_path / "too_big.model").exists()
  with pytest.raises(UserError, match="not found"):
    tok.Tokenizer.load(tmp_path / "missing.model")
  with pytest.raises(UserError, match="is a directory; name the .model file"):
    tok.train(sentences, 40, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m.model"]


def test_tokenizer_command(tmp_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("\n".join(f"The {w} fell from tree {i}." for i, w in
                              enumerate(["apple", "pear", "plum"] * 40)) + "\n")
  out = tmp_path / "c.model"
  run = subprocess.run([sys.executable, "-m", "lmjax.tokenizer", f"--source=text:{corpus}",
                        "--vocab_size=30", f"--output={out}"],
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stderr
  assert "wrote" in run.stdout and tok.Tokenizer.load(out).vocab_size == 30
  bad = subprocess.run([sys.executable, "-m", "lmjax.tokenizer",
                        f"--source=text:{tmp_path}/none.txt", f"--output={out}"],
                       capture_output=True, text=True, check=False)
  assert bad.returncode == 2
  assert bad.stderr.strip().count("\n") == 0 and "no such file" in bad.stderr
  assert tok.Tokenizer.load(out).vocab_size == 30  # the earlier output is intact
