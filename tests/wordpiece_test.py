"""WordPiece vocabularies (Hugging Face BERT's tokenizer) against
transformers' BertTokenizer, and through lmjax's data path."""

import json
import re

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

from lmjax.data import masking, tasks  # noqa: E402 (after the importorskip)
from lmjax.data.tokenization import Tokenizer, HfTokenizer  # noqa: E402
from lmjax.errors import UserError  # noqa: E402

from helpers import CORPUS, TEXTS, build_vocab  # noqa: E402

@pytest.fixture(params=["uncased", "cased"])
def vocab_dir(request, tmp_path):
  lowercase = request.param == "uncased"
  build_vocab(tmp_path / "vocab.txt", lowercase)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lowercase}))
  return tmp_path, lowercase


def reference(vocab_dir_path, lowercase, **options):
  return transformers.BertTokenizer(str(vocab_dir_path / "vocab.txt"),
                                    do_lower_case=lowercase, **options)


def reference_ids(ref, texts):
  return [ref(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_vocab_txt_gives_transformers_ids(vocab_dir):
  path, lowercase = vocab_dir
  ours = Tokenizer.load(path)
  assert isinstance(ours, HfTokenizer)
  assert [ids.tolist() for ids in ours.encode(TEXTS)] == reference_ids(
      reference(path, lowercase), TEXTS)
  assert ours.encode(["[MASK]"])[0].tolist() == [ours.special.mask]  # as transformers
  assert (ours.special.pad, ours.special.unk) == (0, 4)


def test_tokenizer_json_gives_transformers_ids(vocab_dir, tmp_path_factory):
  path, lowercase = vocab_dir
  saved = tmp_path_factory.mktemp("saved")
  reference(path, lowercase).save_pretrained(saved)
  assert (saved / "tokenizer.json").is_file() and not (saved / "vocab.txt").exists()
  ours = Tokenizer.load(saved)
  assert [ids.tolist() for ids in ours.encode(TEXTS)] == reference_ids(
      reference(path, lowercase), TEXTS)
  assert ours.fingerprint != Tokenizer.load(path).fingerprint


@pytest.mark.parametrize("strip_accents", [True, False])
def test_accent_stripping_follows_the_config(tmp_path, strip_accents):
  build_vocab(tmp_path / "vocab.txt", lowercase=True)
  (tmp_path / "tokenizer_config.json").write_text(
      json.dumps({"do_lower_case": True, "strip_accents": strip_accents}))
  ours = Tokenizer.load(tmp_path / "vocab.txt")
  ref = reference(tmp_path, True, strip_accents=strip_accents)
  assert [ids.tolist() for ids in ours.encode(TEXTS)] == reference_ids(ref, TEXTS)


def test_pieces_word_starts_and_specials(vocab_dir):
  path, _ = vocab_dir
  ours = Tokenizer.load(path)
  ids = ours.encode(["antidisestablishmentarianism"])[0]
  pieces = ours.pieces(ids)
  assert len(ids) > 1 and all(p.startswith("##") for p in pieces[1:])
  assert ours.word_starts(ids).tolist() == [True] + [False] * (len(ids) - 1)
  special = [ours.special.pad, ours.special.cls, ours.special.sep, ours.special.mask]
  assert ours.special_V[special].all() and ours.word_starts(np.array(special)).all()
  assert ours.vocab_size == len((path / "vocab.txt").read_text().splitlines())
  assert not np.isin(ours.ordinary_ids, special).any()


def test_task_encoding_uses_the_vocabulary_special_ids(vocab_dir):
  path, lowercase = vocab_dir
  ours = Tokenizer.load(path)
  encoded = tasks.encode(tasks.Examples([("the quick fox", "a lazy dog")], None), ours, 16)
  ref = reference(path, lowercase)("the quick fox", "a lazy dog", padding="max_length",
                                   max_length=16)
  assert encoded.arrays["input_ids"][0].tolist() == ref["input_ids"]
  assert encoded.arrays["segment_ids"][0].tolist() == ref["token_type_ids"]
  assert encoded.arrays["input_mask"][0].tolist() == ref["attention_mask"]


def test_masking_never_predicts_or_draws_a_special_token(vocab_dir):
  path, _ = vocab_dir
  ours = Tokenizer.load(path)
  vocabulary = masking.Vocabulary.of(ours)
  rows = [np.concatenate([[ours.special.cls], ids, [ours.special.sep]])
          for ids in ours.encode([t for t in CORPUS if t][:32])]
  pairs = [dict(tokens=r[:32], b_start=2, is_random_next=0) for r in rows]
  batch = masking.mask_batch(masking.pad_pairs(pairs, 32), masking.Masking(32, 5, 0.5),
                             vocabulary, seed=3, examples_B=np.arange(len(pairs)))
  chosen = batch["masked_weights"] > 0
  targets = batch["masked_ids"][chosen]
  assert chosen.sum() > 0 and not ours.special_V[targets].any()
  replaced = np.take_along_axis(batch["input_ids"], batch["masked_positions"], 1)[chosen]
  assert (replaced == ours.special.mask).mean() > 0.5
  assert not (ours.special_V[replaced] & (replaced != ours.special.mask)).any()


@pytest.mark.parametrize("content,message", [
    ("[PAD]\n[UNK]\n[SEP]\n[MASK]\nthe\n", "the vocabulary has no [CLS]"),
    ("[PAD]\n[CLS]\n[SEP]\n[MASK]\nthe\n", "has no [UNK]"),
    ("[UNK]\n[CLS]\n[SEP]\nthe\n", "the vocabulary has no [PAD], [MASK]"),
])
def test_a_vocabulary_without_special_tokens_is_one_line(tmp_path, content, message):
  (tmp_path / "vocab.txt").write_text(content)
  with pytest.raises(UserError, match=re.escape(message)) as e:
    Tokenizer.load(tmp_path / "vocab.txt")
  assert "vocab.txt" in str(e.value) and "\n" not in str(e.value)


def test_files_that_are_no_tokenizer_are_one_line(tmp_path):
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(UserError, match="tokenizer.json: not a tokenizers vocabulary"):
    Tokenizer.load(tmp_path)
  with pytest.raises(UserError, match="no tokenizer"):
    Tokenizer.load(tmp_path / "..")
