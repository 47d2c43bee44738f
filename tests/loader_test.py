"""The loader: deterministic, resumable at any batch, split across processes."""

import numpy as np
import pytest
from helpers import pretraining

from lmjax.data import loader, pretrain_input


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  return pretraining(data_dir=str(tmp_path_factory.mktemp("tfds")),
                         cache_dir=str(tmp_path_factory.mktemp("cache")))


def _equal(a, b):
  return all(np.array_equal(a[k], b[k]) for k in a)


def test_same_seed_same_batches_other_seed_other_batches(config):
  first, _, _ = pretrain_input.pretraining_input(config.data, 16, seed=0)
  second, _, _ = pretrain_input.pretraining_input(config.data, 16, seed=0)
  other, _, _ = pretrain_input.pretraining_input(config.data, 16, seed=1)
  a, b, c = loader.Loader(first), loader.Loader(second), loader.Loader(other)
  for _ in range(5):
    x, y, z = next(a), next(b), next(c)
    assert _equal(x, y) and not _equal(x, z)


def test_restored_loader_continues_exactly(config):
  dataset, _, _ = pretrain_input.pretraining_input(config.data, 16, seed=0)
  uninterrupted = loader.Loader(dataset)
  want = [next(uninterrupted) for _ in range(12)]
  interrupted = loader.Loader(dataset)
  for _ in range(7):
    next(interrupted)
  state = interrupted.state()
  assert state == {"step": 7}
  restored = loader.Loader(dataset)
  restored.restore(state)
  for k in range(7, 12):
    assert _equal(next(restored), want[k])
  assert restored.state() == {"step": 12}


def test_masks_change_every_epoch_but_pairs_stay(config):
  dataset, _, info = pretrain_input.pretraining_input(config.data, 16, seed=0)
  per_epoch = info["pairs"] // 16  # batches per epoch, ignoring the remainder
  first = [dataset[k] for k in range(per_epoch)]
  second = [dataset[k] for k in range(per_epoch, 2 * per_epoch)]
  def originals(batches):
    out = set()
    for b in batches:
      for ids, pos, tgt, w in zip(b["input_ids"], b["masked_positions"],
                                  b["masked_ids"], b["masked_weights"], strict=True):
        ids = ids.copy()
        ids[pos[w > 0]] = tgt[w > 0]
        out.add((ids.tobytes(), pos.tobytes()))  # (pair text, where it was masked)
    return out
  one, two = originals(first), originals(second)
  texts_one, texts_two = {t for t, _ in one}, {t for t, _ in two}
  assert len(texts_one & texts_two) > 0.95 * len(texts_one)  # same pairs
  shared = texts_one & texts_two
  same_mask = len({(t, m) for t, m in one if t in shared} &
                  {(t, m) for t, m in two if t in shared})
  assert same_mask < 0.02 * len(shared)  # but new masks


@pytest.mark.parametrize("processes", [2, 4])
def test_process_shares_are_disjoint_and_make_the_global_batch(config, processes):
  whole, _, _ = pretrain_input.pretraining_input(config.data, 16, seed=0)
  shares = [pretrain_input.pretraining_input(config.data, 16, seed=0, process_index=p,
                                     process_count=processes)[0]
            for p in range(processes)]
  for k in (0, 3, 500):
    parts = [s[k] for s in shares]
    assert all(len(p["input_ids"]) == 16 // processes for p in parts)
    for key in whole[k]:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[k][key])


def test_uneven_process_split_is_an_error(config):
  with pytest.raises(Exception, match="split evenly"):
    pretrain_input.pretraining_input(config.data, 10, seed=0, process_count=4)


def test_the_corpus_is_prepared_once_into_the_cache(tmp_path, config):
  config = pretraining(data_dir=config.data.data_dir, cache_dir=str(tmp_path))
  _, _, first = pretrain_input.pretraining_input(config.data, 8, seed=0)
  _, _, second = pretrain_input.pretraining_input(config.data, 8, seed=0)
  assert first["cache"] == "miss" and second["cache"] == "hit"
  assert first["tokens"] == second["tokens"] and first["pairs"] == second["pairs"]
  (directory,) = tmp_path.glob("prepared-*")
  assert sorted(p.name for p in directory.iterdir()) == [
      "metadata.json", "train-00000-of-00001.array_record",
      "validation-00000-of-00001.array_record"]
  _, _, other_seed = pretrain_input.pretraining_input(config.data, 8, seed=1)
  assert other_seed["cache"] == "miss" and len(list(tmp_path.glob("prepared-*"))) == 2


def test_damaged_cache_is_rebuilt(tmp_path, config):
  config = pretraining(data_dir=config.data.data_dir, cache_dir=str(tmp_path))
  dataset, _, first = pretrain_input.pretraining_input(config.data, 8, seed=0)
  expected = dataset[3]["input_ids"]
  (shard,) = tmp_path.glob("prepared-*/train-*")
  shard.write_bytes(shard.read_bytes()[:1000])
  again_dataset, _, again = pretrain_input.pretraining_input(config.data, 8, seed=0)
  assert again["cache"] == "miss" and again["tokens"] == first["tokens"]
  np.testing.assert_array_equal(again_dataset[3]["input_ids"], expected)


def test_a_corpus_of_a_few_tokens_a_document_is_warned_about(tmp_path, capsys, monkeypatch):
  import ml_collections  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("LMJAX_CACHE", str(tmp_path / "cache"))
  (tmp_path / "c.txt").write_text("\n\n".join(f"word {i}." for i in range(30)) + "\n")
  data = ml_collections.ConfigDict(dict(
      source=f"text:{tmp_path}/c.txt", text_field="text", tokenizer="", data_dir="",
      cache_dir="", max_seq_length=32, max_predictions_per_seq=5, masked_lm_prob=0.15,
      short_seq_prob=0.1, whole_word_masking=False, num_threads=0))
  pretrain_input.pretraining_input(data, 4, 0)
  out = capsys.readouterr().out
  assert "warning: text:" in out and "documents of" in out and "a document)" in out


def _pairs(batch):
  """{example index: (its tokens, MLM positions and targets in it, NSP label)}
  of an unpacked batch, or of packed rows."""
  if "example_starts" not in batch:
    return {i: (ids[m > 0].tolist(), pos[w > 0].tolist(), tgt[w > 0].tolist(), int(label))
            for i, (ids, m, pos, tgt, w, label) in enumerate(zip(
                batch["input_ids"], batch["input_mask"], batch["masked_positions"],
                batch["masked_ids"], batch["masked_weights"], batch["nsp_labels"],
                strict=True))}
  out = {}
  for r, e in zip(*np.nonzero(batch["example_mask"]), strict=True):
    start = batch["example_starts"][r, e]
    i = batch["example_index"][r, start]
    mine = batch["example_index"][r] == i
    w = batch["masked_weights"][r] > 0
    pos = batch["masked_positions"][r][w]
    inside = mine[pos]
    out[int(i)] = (batch["input_ids"][r][mine].tolist(), (pos[inside] - start).tolist(),
                   batch["masked_ids"][r][w][inside].tolist(), int(batch["nsp_labels"][r, e]))
  return out


def test_packed_batches_hold_the_same_masked_pairs_in_fewer_rows(config):
  rows = pretrain_input.RowPacking(groups=2, row_multiple=2)
  one, _, _ = pretrain_input.pretraining_input(config.data, 16, seed=0)
  packed, _, _ = pretrain_input.pretraining_input(config.data, 16, seed=0, rows=rows)
  shares = [pretrain_input.pretraining_input(config.data, 16, seed=0, rows=rows,
                                             process_index=p, process_count=2)[0]
            for p in range(2)]
  for k in (0, 5):
    unpacked = _pairs(one[k])
    # Micro-batch g of 2 holds examples g, g + 2, ... as 0, 1, ...
    regrouped = {}
    for g in range(2):
      group = {k: v[g::2] for k, v in packed[k].items()}
      regrouped.update({2 * i + g: pair for i, pair in _pairs(group).items()})
    assert regrouped == unpacked
    assert len(packed[k]["input_ids"]) <= 16 and len(packed[k]["input_ids"]) % 4 == 0
    assert packed[k]["masked_ids"].shape[1] >= one[k]["masked_ids"].shape[1]
    joined = {name: np.concatenate([s[k][name] for s in shares]) for name in packed[k]}
    assert _equal(joined, packed[k])


def test_a_window_of_steps_packs_its_pairs_together_masked_as_one_a_row(config):
  """Window w of 4 steps holds exactly the pairs of those 4 unpacked steps,
  each masked as it is unpacked (by its place in the stream); rows are at
  least as dense; processes' shares join into the one-process batch."""
  rows = pretrain_input.RowPacking(groups=2, row_multiple=2, window=4)
  one, _, _ = pretrain_input.pretraining_input(config.data, 16, seed=0)
  packed, _, _ = pretrain_input.pretraining_input(config.data, 16, seed=0, rows=rows)
  alone, _, _ = pretrain_input.pretraining_input(
      config.data, 16, seed=0, rows=pretrain_input.RowPacking(groups=2, row_multiple=2))
  shares = [pretrain_input.pretraining_input(config.data, 16, seed=0, rows=rows,
                                             process_index=p, process_count=2)[0]
            for p in range(2)]
  for window in (0, 3):
    steps = range(4 * window, 4 * window + 4)
    unpacked = {(s - 4 * window) * 16 + i: pair
                for s in steps for i, pair in _pairs(one[s]).items()}
    held = {}
    for s in steps:
      batch = packed[s]
      assert len(batch["input_ids"]) % 4 == 0  # 2 micro-batches x 2 devices
      mine = _pairs(batch)
      assert not set(mine) & set(held)  # no pair in two steps
      held.update(mine)
      joined = {name: np.concatenate([share[s][name] for share in shares]) for name in batch}
      assert _equal(joined, batch) and _equal(packed[s], batch)  # deterministic
    assert held == unpacked
    assert (sum(packed[s]["input_ids"].size for s in steps)
            <= sum(alone[s]["input_ids"].size for s in steps))

