"""Fine-tuning data: tasks, local files, encoding, batches."""

import json
import pickle

import ml_collections
import numpy as np
import pytest

from lmjax.data import builtin, tasks
from lmjax.data.task_input import bucket_lengths, evaluation_batches, examples_dataset
from lmjax.data.tokenization import CLS_ID, PAD_ID, SEP_ID, Tokenizer
from lmjax.errors import ConfigError, MissingSplitError, UserError


def task_config(**overrides):
  fields = dict(source="rt_polarity", text_fields="", label_field="label", labels="",
                regression=False, metrics="")
  return ml_collections.ConfigDict({**fields, **overrides})


def write_tsv(path, rows, header=("text", "label")):
  path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n")
  return path


@pytest.fixture(scope="module")
def tokenizer():
  return Tokenizer.load(builtin.TOKENIZER_FILE)


def test_known_tasks_have_their_labels_and_metrics():
  rt = tasks.resolve_task(task_config())
  assert (rt.labels, rt.metrics[0], rt.text_fields) == (("rotten", "fresh"), "accuracy",
                                                         ("text",))
  cola = tasks.resolve_task(task_config(source="glue/cola"))
  assert cola.metrics[0] == "matthews_corr" and cola.num_labels == 2
  stsb = tasks.resolve_task(task_config(source="glue/stsb"))
  assert stsb.is_regression and stsb.num_labels == 1 and stsb.text_fields == (
      "sentence1", "sentence2")
  mnli = tasks.resolve_task(task_config(source="glue/mnli"))
  assert mnli.num_labels == 3 and mnli.splits["validation"] == "validation_matched"
  with pytest.raises(ConfigError, match="unknown GLUE task 'sst3'"):
    tasks.resolve_task(task_config(source="glue/sst3"))
  with pytest.raises(ConfigError, match="is not rt_polarity"):
    tasks.resolve_task(task_config(source="parquet:x"))


def test_a_glue_task_without_its_data_is_a_one_line_error(tmp_path):
  task = tasks.resolve_task(task_config(source="glue/rte"))
  with pytest.raises(UserError, match="not prepared") as e:
    tasks.load_split(task, "train", str(tmp_path))
  assert "\n" not in str(e.value)


def test_a_local_file_is_split_by_hash_with_sorted_labels(tmp_path):
  rows = [(f"review number {i} is {'good' if i % 3 else 'bad'}", "pos" if i % 3 else "neg")
          for i in range(300)]
  path = write_tsv(tmp_path / "reviews.tsv", rows)
  task = tasks.resolve_task(task_config(source=f"tsv:{path}"))
  assert task.labels == ("neg", "pos") and task.metrics == ("accuracy", "f1")
  splits = {s: tasks.load_split(task, s) for s in tasks.SPLITS}
  assert sum(map(len, splits.values())) == 300
  assert 10 <= len(splits["validation"]) <= 50 and 10 <= len(splits["test"]) <= 50
  texts = [t for s in splits.values() for t in s.texts]
  assert len(set(texts)) == 300  # every row in exactly one split
  for split in splits.values():
    for (text,), label in zip(split.texts, split.labels, strict=True):
      assert task.labels[label] == ("pos" if "good" in text else "neg")
  again = tasks.load_split(task, "test")
  assert again.texts == splits["test"].texts  # stable


def test_per_split_files_pairs_and_numeric_labels(tmp_path):
  for split in ("train", "validation"):
    write_tsv(tmp_path / f"{split}.tsv",
              [(f"q {i}", f"a {i}", i % 3) for i in range(12)],
              header=("question", "sentence", "label"))
  task = tasks.resolve_task(task_config(source=f"tsv:{tmp_path}/{{split}}.tsv"))
  assert task.text_fields == ("question", "sentence") and task.labels == ("0", "1", "2")
  assert task.metrics == ("accuracy", "f1_macro")
  train = tasks.load_split(task, "train")
  assert len(train) == 12 and train.texts[4] == ("q 4", "a 4") and train.labels[4] == 1
  with pytest.raises(MissingSplitError):
    tasks.load_split(task, "test")  # no test file


def test_csv_and_jsonl_sources(tmp_path):
  csv_file = tmp_path / "d.csv"
  csv_file.write_text("sentence,label\n" + "".join(
      f'"{i} one, with a comma",yes\n"{i} two ""quoted""",no\n' for i in range(30)))
  task = tasks.resolve_task(task_config(source=f"csv:{csv_file}", labels="no,yes"))
  examples = tasks.load_split(task, "train")
  assert ("7 one, with a comma",) in examples.texts or ("7 one, with a comma",) in \
      tasks.load_split(task, "validation").texts + tasks.load_split(task, "test").texts
  assert all(t[0].endswith(("comma", 'two "quoted"')) for t in examples.texts)
  jsonl = tmp_path / "d.jsonl"
  jsonl.write_text("".join(json.dumps({"text": f"t{i}", "score": i / 10}) + "\n"
                           for i in range(40)))
  task = tasks.resolve_task(task_config(source=f"jsonl:{jsonl}", label_field="score",
                                      regression=True))
  assert task.is_regression and task.metrics == ("pearson", "spearman")
  train = tasks.load_split(task, "train")
  assert train.labels.dtype == np.float32
  assert all(abs(score - int(t[0][1:]) / 10) < 1e-6
             for t, score in zip(train.texts, train.labels, strict=True))


@pytest.mark.parametrize("content,config,message", [
    ("", {}, "empty file"),
    ("text\tlabel\n", {}, "no examples"),
    ("words\tlabel\nhello\tpos\n", {}, "no text column among words, label"),
    ("text\tstars\nhello\tpos\n", {}, "no column 'label' (columns: text, stars)"),
    ("text\tlabel\nhello\tpos\nbye\tneg\nhi\tmeh\n", {"labels": "pos,neg"},
     "d.tsv:4: unknown label 'meh' (the task's labels: pos, neg)"),
    ("text\tlabel\nhello\tpos\tx\n", {}, "d.tsv:2: 3 columns, the header has 2"),
    ("text\tlabel\nhello\t1.5\nbye\thigh\n", {"regression": True},
     "d.tsv:3: label 'high' is not a number"),
    ("text\tlabel\nhello\tpos\nbye\tpos\n", {}, "at least 2 labels"),
])
def test_bad_local_files_are_one_line_errors(tmp_path, content, config, message):
  path = tmp_path / "d.tsv"
  path.write_text(content)
  with pytest.raises(UserError) as e:
    task = tasks.resolve_task(task_config(source=f"tsv:{path}", **config))
    for split in tasks.SPLITS:
      tasks.load_split(task, split)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_label_in_a_validation_file_names_file_and_line(tmp_path):
  write_tsv(tmp_path / "train.tsv", [("a", "x"), ("b", "y")])
  write_tsv(tmp_path / "validation.tsv", [("c", "x"), ("d", "z")])
  task = tasks.resolve_task(task_config(source=f"tsv:{tmp_path}/{{split}}.tsv"))
  with pytest.raises(UserError, match=r"validation.tsv:3: unknown label 'z'"):
    tasks.load_split(task, "validation")


def test_encoding_truncates_and_counts(tokenizer):
  long = " ".join(["word"] * 40)
  examples = tasks.Examples([("a short one",), (long,)], np.array([0, 1], np.int32))
  encoded = tasks.encode(examples, tokenizer, 16)
  ids, mask = encoded.arrays["input_ids"], encoded.arrays["input_mask"]
  assert encoded.truncated == 1 and ids.shape == (2, 16)
  short = tokenizer.encode(["a short one"])[0]
  assert list(ids[0, :len(short) + 2]) == [CLS_ID, *short, SEP_ID]
  assert (ids[0, len(short) + 2:] == PAD_ID).all() and mask[0].sum() == len(short) + 2
  assert ids[1, 0] == CLS_ID and ids[1, -1] == SEP_ID and mask[1].all()
  assert (encoded.arrays["segment_ids"] == 0).all()


def test_pairs_lose_tokens_from_the_longer_text(tokenizer):
  a, b = " ".join(["alpha"] * 30), "beta gamma"
  encoded = tasks.encode(tasks.Examples([(a, b)], None), tokenizer, 20)
  ids, types = encoded.arrays["input_ids"][0], encoded.arrays["segment_ids"][0]
  b_ids = list(tokenizer.encode([b])[0])
  assert encoded.truncated == 1 and "labels" not in encoded.arrays
  assert list(ids[-len(b_ids) - 1:]) == [*b_ids, SEP_ID]  # b kept whole
  assert (types[-len(b_ids) - 1:] == 1).all() and (types[:-len(b_ids) - 1] == 0).all()
  assert list(ids).count(SEP_ID) == 2


def test_evaluation_batches_cover_every_example_once():
  arrays = {"x": np.arange(21)[:, None], "labels": np.arange(21)}
  full = evaluation_batches(arrays, 8)
  assert len(full) == 3
  weights = np.concatenate([b["weights"] for b in full])
  assert weights.sum() == 21 and (weights[:21] == 1).all()
  assert list(np.concatenate([b["labels"] for b in full])[:21]) == list(range(21))
  shares = [evaluation_batches(arrays, 8, p, 2) for p in range(2)]
  for k in range(3):
    joined = np.concatenate([shares[0][k]["labels"], shares[1][k]["labels"]])
    assert (joined == full[k]["labels"]).all()


def test_training_batches_visit_every_example_each_epoch_in_new_orders():
  arrays = {"labels": np.arange(40)}
  ds = examples_dataset(arrays, 8, seed=3)
  epoch1 = np.concatenate([ds[k]["labels"] for k in range(5)])
  epoch2 = np.concatenate([ds[k]["labels"] for k in range(5, 10)])
  assert sorted(epoch1) == sorted(epoch2) == list(range(40))
  assert (epoch1 != epoch2).any()
  shares = [examples_dataset(arrays, 8, 3, p, 2) for p in range(2)]
  assert (np.concatenate([shares[0][2]["labels"], shares[1][2]["labels"]])
          == ds[2]["labels"]).all()


def _varied_lengths(n=40, length=32, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, length + 1, n)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(5, 100, (n, length)).astype(np.int32) * mask
  return dict(input_ids=ids, segment_ids=np.zeros_like(ids), input_mask=mask,
              labels=np.arange(n)), lengths


def test_bucket_lengths_are_a_few_multiples_of_eight_ending_at_the_maximum():
  assert bucket_lengths(128, 4) == (32, 64, 96, 128)
  assert bucket_lengths(128, 1) == (128,)
  assert bucket_lengths(100, 3) == (40, 72, 100)
  assert bucket_lengths(12, 8) == (8, 12)


def test_training_batches_pad_to_their_bucket_and_keep_their_examples():
  arrays, lengths = _varied_lengths()
  buckets = bucket_lengths(32, 4)
  plain, bucketed = examples_dataset(arrays, 8, seed=3), examples_dataset(arrays, 8, 3,
                                                                          buckets=buckets)
  seen = set()
  for k in range(10):
    a, b = plain[k], bucketed[k]
    longest = lengths[a["labels"]].max()
    width = b["input_ids"].shape[1]
    assert width == min(x for x in buckets if x >= longest)
    assert (a["labels"] == b["labels"]).all()
    assert (a["input_ids"][:, :width] == b["input_ids"]).all()
    assert (a["input_mask"][:, width:] == 0).all()  # only padding was cut
    seen.add(width)
    shares = [examples_dataset(arrays, 8, 3, p, 2, buckets=buckets)[k] for p in range(2)]
    assert {s["input_ids"].shape[1] for s in shares} == {width}  # every process alike
    assert (np.concatenate([s["labels"] for s in shares]) == b["labels"]).all()
  assert len(seen) > 1


def test_grouped_batches_hold_one_bucket_and_every_example_once_an_epoch():
  arrays, lengths = _varied_lengths(n=100)
  buckets = bucket_lengths(32, 4)
  grouped = examples_dataset(arrays, 8, 3, buckets=buckets, group_window=12)
  plain = examples_dataset(arrays, 8, 3, buckets=buckets)
  epochs = [[grouped[e * 12 + i]["labels"] for i in range(12)] for e in range(2)]
  for batches in epochs:  # 12 batches of 8: the 4 examples left over sit the epoch out
    rows = np.concatenate(batches)
    assert len(set(rows)) == 96
  assert not all((a == b).all() for a, b in zip(*epochs, strict=True))  # reshuffled every epoch

  def one_bucket(ds):  # the share of batches whose examples all pad to one bucket
    return np.mean([len(set(np.searchsorted(buckets, lengths[ds[k]["labels"]]))) == 1
                    for k in range(24)])
  assert one_bucket(grouped) >= 0.5 > one_bucket(plain)
  # In random order within a bucket, not sorted by length (which can go with the label).
  assert any((np.diff(lengths[grouped[k]["labels"]]) < 0).any() for k in range(24))
  widths = [grouped[k]["input_ids"].shape[1] for k in range(24)]
  assert np.mean(widths) < np.mean([plain[k]["input_ids"].shape[1] for k in range(24)])
  for k in (0, 13, 30):  # any batch alone, as a resumed loader reads it
    again = examples_dataset(arrays, 8, 3, buckets=buckets, group_window=12)[k]
    assert all((again[f] == grouped[k][f]).all() for f in again)
    longest = lengths[again["labels"]].max()
    assert again["input_ids"].shape[1] == min(x for x in buckets if x >= longest)
    shares = [examples_dataset(arrays, 8, 3, p, 2, buckets=buckets, group_window=12)[k]
              for p in range(2)]
    assert (np.concatenate([s["labels"] for s in shares]) == again["labels"]).all()
    assert {s["input_ids"].shape[1] for s in shares} == {again["input_ids"].shape[1]}
  copied = pickle.loads(pickle.dumps(grouped))  # grain's worker processes take a copy
  assert (copied[13]["labels"] == grouped[13]["labels"]).all()
  few = {k: v[:5] for k, v in arrays.items()}  # fewer examples than a batch: as shuffled
  assert examples_dataset(few, 8, 3, group_window=12)[0]["labels"].shape == (8,)


def test_evaluation_in_length_order_gives_each_example_its_own_logits():
  import jax  # pylint: disable=import-outside-toplevel

  from lmjax import parallel  # pylint: disable=import-outside-toplevel
  from lmjax.runs.scoring import device_batches, logits  # pylint: disable=import-outside-toplevel
  arrays, lengths = _varied_lengths(n=45)
  mesh = parallel.make_mesh()
  batches = device_batches(arrays, 16, mesh, bucket_lengths(32, 4))
  widths = [b["input_ids"].shape[1] for b in batches.batches]
  assert widths == sorted(widths) and widths[0] < 32  # short examples first, in short batches
  step = jax.jit(lambda params, b: jax.numpy.stack(
      [b["input_mask"].sum(1), b["input_ids"].sum(1)], 1).astype(jax.numpy.float32))
  out = logits(step, None, batches)
  assert (out[:, 0] == lengths).all() and (out[:, 1] == arrays["input_ids"].sum(1)).all()
