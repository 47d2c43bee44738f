"""Sentence pairs and masking, checked against BERT's recipe, in aggregate."""


import numpy as np
import pytest
from helpers import pretraining

from lmjax.data import instances, pretrain_input
from lmjax.data.tokenization import CLS_ID, MASK_ID, NUM_SPECIAL, SEP_ID
from lmjax.errors import UserError
from lmjax.preview import batch_statistics



@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  return dict(data_dir=str(tmp_path_factory.mktemp("tfds")),
              cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def austen(dirs):
  config = pretraining(**dirs)
  return pretrain_input.pretraining_input(config.data, 64, seed=0)


def _batches(dataset, count, start=0):
  return [dataset[k] for k in range(start, start + count)]


def test_statistics_follow_berts_recipe(austen):
  dataset, _, info = austen
  batches = _batches(dataset, 100)  # 6,400 sequences, > 100,000 predictions
  stats = batch_statistics(batches)
  assert stats["predicted_positions"] >= 100_000
  assert abs(stats["predicted_fraction"] - 0.15) < 0.005
  assert abs(stats["mask_share"] - 0.8) < 0.01
  assert abs(stats["random_share"] - 0.1) < 0.01
  assert abs(stats["kept_share"] - 0.1) < 0.01
  assert abs(stats["nsp_random_next_rate"] - 0.5) < 0.02
  assert stats["special_tokens_predicted"] == 0
  assert stats["max_sequence_length"] <= 128
  assert info["documents"] > 200 and info["pairs"] > 5000


def test_every_sequence_is_well_formed(austen):
  dataset, tokenizer, _ = austen
  for batch in _batches(dataset, 10):
    for i in range(len(batch["input_ids"])):
      n = batch["input_mask"][i].sum()
      ids, seg = batch["input_ids"][i], batch["segment_ids"][i]
      assert (batch["input_mask"][i][:n] == 1).all() and (ids[n:] == 0).all()
      assert ids[0] == CLS_ID and ids[n - 1] == SEP_ID
      seps = np.flatnonzero(ids[:n] == SEP_ID)
      assert len(seps) == 2  # [SEP] is never a masking target
      assert (seg[:seps[0] + 1] == 0).all() and (seg[seps[0] + 1:n] == 1).all()
      w = batch["masked_weights"][i] > 0
      pos = batch["masked_positions"][i][w]
      assert (np.diff(pos) > 0).all() and (pos > 0).all() and (pos < n).all()
      assert (batch["masked_ids"][i][w] >= NUM_SPECIAL).all()
      kinds = ids[pos]
      assert ((kinds == MASK_ID) | (kinds >= NUM_SPECIAL)).all()
      assert batch["masked_ids"].dtype == np.int32
      assert batch["masked_weights"].dtype == np.float32
  assert tokenizer.vocab_size == 8000


def test_predictions_are_capped(dirs):
  config = pretraining(max_predictions_per_seq=5, **dirs)
  dataset, _, _ = pretrain_input.pretraining_input(config.data, 32, seed=0)
  stats = batch_statistics(_batches(dataset, 5))
  assert stats["capped_sequences"] > 0.9
  assert dataset[0]["masked_positions"].shape == (32, 5)


def test_whole_word_masking_masks_all_pieces_of_a_word(dirs):
  config = pretraining(whole_word_masking=True, **dirs)
  dataset, tokenizer, _ = pretrain_input.pretraining_input(config.data, 32, seed=0)
  batches = _batches(dataset, 40)
  stats = batch_statistics(batches)
  assert abs(stats["predicted_fraction"] - 0.15) < 0.02
  multi_piece_words = 0
  for batch in batches:
    for ids, pos, tgt, w in zip(batch["input_ids"], batch["masked_positions"],
                                batch["masked_ids"], batch["masked_weights"],
                                strict=True):
      original = ids.copy()
      original[pos[w > 0]] = tgt[w > 0]
      n = int((ids > 0).sum())
      # A piece after a special token ([CLS], [SEP], [UNK]) starts a word:
      # special tokens are never targets, so they split words.
      starts = tokenizer.word_starts(original[:n]) | (
          np.roll(original[:n], 1) < NUM_SPECIAL)
      chosen = np.zeros(n, bool)
      chosen[pos[w > 0]] = True
      word = np.cumsum(starts)  # word index of each piece
      for k in np.unique(word[chosen]):
        members = word == k
        assert chosen[members].all(), "a word was only partly masked"
        multi_piece_words += members.sum() > 1
  assert multi_piece_words > 50


def test_short_sequences_appear_at_short_seq_prob(austen):
  dataset, _, _ = austen
  lengths = np.concatenate([b["input_mask"].sum(1) for b in _batches(dataset, 50)])
  short = (lengths < 100).mean()
  assert 0.03 < short < 0.25


def test_pairs_reject_bad_settings():
  document = [np.arange(10, 15, dtype=np.int32), np.arange(15, 20, dtype=np.int32)]
  with pytest.raises(UserError, match="max_seq_length"):
    list(instances.document_pairs([document], 4, 0.1, 0))
  pairs = list(instances.document_pairs([document], 16, 0.0, 0))
  assert len(pairs) >= 1 and all(b_start >= 2 for _, b_start, _ in pairs)


@pytest.mark.parametrize("field,value", [
    ("masked_lm_prob", 1.5), ("max_predictions_per_seq", 0),
    ("max_seq_length", 3), ("short_seq_prob", -0.1)])
def test_bad_data_config_values_name_the_field(dirs, field, value):
  config = pretraining(**dirs)
  config.data[field] = value
  with pytest.raises(UserError, match=f"config.data.{field}"):
    pretrain_input.check_data_config(config.data)
