"""Fine-tuning end to end: starts (pretraining run, Hugging Face, random),
training past the majority class, predict mode, and bad input."""

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import scipy.special

from lmjax import finetune as finetune_main
from lmjax.data import builtin, tokenization
from lmjax.data import tasks as cls
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import ConfigError, UserError
from lmjax.interop.hf import load_hf_bert, save_hf_bert
from lmjax.model import BertConfig, BertForPreTraining, BertForSequenceClassification
from lmjax.runs import finetuning, prediction
from lmjax.runs.pretraining import train_and_evaluate

from helpers import ROOT, finetune_config, pretrain_config, review, task_config

pytestmark = pytest.mark.usefixtures("data_dirs")


def metric_lines(workdir):
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def tree_digest(directory: Path) -> dict:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, reviews_tsv):
  """A fine-tuning run from random weights on the reviews."""
  workdir = tmp_path_factory.mktemp("runs") / "random"
  c = task_config(reviews_tsv)
  c.init.source = "random"
  return workdir, finetuning.finetune(c, workdir)


@pytest.mark.slow
def test_random_start_learns_the_task_beyond_the_majority_class(trained):
  workdir, summary = trained
  assert summary["test_accuracy"] > summary["test_majority_accuracy"] + 0.15
  assert summary["eval_accuracy"] > summary["eval_majority_accuracy"] + 0.15
  assert 0.5 < summary["test_majority_accuracy"] < 0.7
  assert summary["at_majority_class"] is False
  # A keyword decides the label: the bag-of-words baseline finds it.
  assert summary["test_tfidf_accuracy"] > 0.95 and summary["eval_tfidf_f1"] > 0.95
  lines = metric_lines(workdir)
  evals = {line["step"]: line["eval_accuracy"] for line in lines if "eval_accuracy" in line}
  assert sorted(evals) == [0, 40, 80, 120]
  losses = [line["loss"] for line in lines if "loss" in line]
  assert np.mean(losses[-2:]) < 0.7 * losses[0]
  assert summary["best_step"] == max(evals, key=lambda s: (evals[s], -s))
  assert (workdir / "best" / str(summary["best_step"])).is_dir()
  assert json.loads((workdir / "summary.json").read_text()) == summary
  assert any("test_accuracy" in line for line in lines)


def test_the_default_learning_rate_follows_the_encoders_width():
  train = finetune_config.get_config().train
  assert train.learning_rate is None and train.epochs == 5
  rates = [finetuning.learning_rate(train, width) for width in (128, 256, 512, 768, 1024)]
  assert rates == [5e-4, 5e-4, 1e-4, 3e-5, 3e-5]
  train.learning_rate = 2e-5
  assert finetuning.learning_rate(train, 128) == 2e-5


@pytest.mark.slow
def test_a_run_that_learns_nothing_says_so_with_what_to_try(tmp_path, reviews_tsv):
  c = task_config(reviews_tsv, steps=1, learning_rate=1e-9, eval_every=1)
  c.init.source = "random"
  summary = finetuning.finetune(c, tmp_path / "w")
  assert summary["at_majority_class"] is True
  assert summary["eval_accuracy"] <= summary["eval_majority_accuracy"]
  line = finetune_main.report(summary, 1.0)
  assert line.endswith(finetune_main.AT_MAJORITY) and "learning_rate" in line


@pytest.mark.slow
def test_predict_writes_labels_and_probabilities(trained, tmp_path):
  workdir, summary = trained
  rng = random.Random(7)
  texts = [review(rng, i % 2 == 0) for i in range(40)]
  (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
  c = finetune_config.get_config()
  c.mode, c.predict.input = "predict", str(tmp_path / "texts.txt")
  c.predict.output = str(tmp_path / "out" / "predictions.jsonl")
  out = prediction.predict(c, workdir)
  assert out["predictions"] == 40 and out["checkpoint_step"] == summary["best_step"]
  rows = [json.loads(line) for line in Path(c.predict.output).read_text().splitlines()]
  assert [r["text"] for r in rows] == texts
  for r in rows:
    assert set(r["probabilities"]) == {"neg", "pos"}
    assert abs(sum(r["probabilities"].values()) - 1) < 1e-4
    assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
  correct = [r["label"] == ("pos" if i % 2 == 0 else "neg") for i, r in enumerate(rows)]
  assert np.mean(correct) > 0.75


@pytest.mark.slow
def test_buckets_alone_keep_the_run_and_grouping_keeps_its_learning(tmp_path, reviews_tsv):
  """Padding less changes no token's computation (dropout masks included);
  grouping lengths changes the batches, not what the run learns."""
  runs = {}
  for name, buckets, group in (("padded", 1, 0), ("buckets", 4, 0), ("grouped", 4, 4)):
    c = task_config(reviews_tsv, steps=60, eval_every=30)
    c.init.source, c.task.max_seq_length = "random", 32
    c.task.length_buckets, c.task.group_by_length = buckets, group
    c.task.packing = False
    runs[name] = (finetuning.finetune(c, tmp_path / name), metric_lines(tmp_path / name))
  (padded, padded_lines), (bucketed, bucketed_lines) = runs["padded"], runs["buckets"]
  losses = [[line["loss"] for line in lines if "loss" in line]
            for lines in (padded_lines, bucketed_lines)]
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
  assert bucketed["eval_accuracy"] == padded["eval_accuracy"]
  assert bucketed["test_accuracy"] == padded["test_accuracy"]
  assert [line.get("tokens_per_s") is None for line in bucketed_lines] == [
      line.get("tokens_per_s") is None for line in padded_lines]
  grouped = runs["grouped"][0]
  assert grouped["test_accuracy"] > grouped["test_majority_accuracy"] + 0.1


@pytest.mark.slow
def test_packed_rows_give_the_padded_run_step_for_step(tmp_path, reviews_tsv):
  """30 steps of micro-batches, dropout included: the same losses, the same
  predictions, on about a third of the token positions."""
  runs = {}
  for packing in (False, True):
    c = task_config(reviews_tsv, steps=30, eval_every=15, log_every=1, grad_accum_steps=2,
                    batch_size=32)
    c.init.source, c.task.max_seq_length, c.task.length_buckets = "random", 48, 1
    c.task.packing = packing
    summary = finetuning.finetune(c, tmp_path / str(packing))
    runs[packing] = summary, metric_lines(tmp_path / str(packing))
  (padded, padded_lines), (packed, packed_lines) = runs[False], runs[True]
  for key in ("loss", "accuracy", "eval_loss"):
    values = [[line[key] for line in lines if key in line] for lines in (padded_lines,
                                                                         packed_lines)]
    assert len(values[0]) == len(values[1]) >= 3
    np.testing.assert_allclose(values[1], values[0], rtol=1e-5)
  for key in ("eval_accuracy", "test_accuracy", "test_f1", "best_step"):
    assert packed[key] == padded[key], key
  fractions = [[line["real_token_fraction"] for line in lines if "loss" in line]
               for lines in (padded_lines, packed_lines)]
  # A micro-batch's rows come in multiples of the 8 devices here.
  assert np.mean(fractions[1]) > 1.8 * np.mean(fractions[0])
  c = task_config(reviews_tsv)
  c.mode, c.predict.input = "predict", str(tmp_path / "texts.txt")
  (tmp_path / "texts.txt").write_text("".join(f"{review(random.Random(i), True)}\n"
                                              for i in range(50)))
  predictions = [prediction.predict(c, tmp_path / str(packing)) and
                 (tmp_path / str(packing) / "predictions.jsonl").read_text()
                 for packing in (False, True)]
  one, two = ([json.loads(line) for line in p.splitlines()] for p in predictions)
  assert [r["label"] for r in one] == [r["label"] for r in two]
  for a, b in zip(one, two, strict=True):
    np.testing.assert_allclose(list(a["probabilities"].values()),
                               list(b["probabilities"].values()), atol=1e-5)


def evaluate_directly(model_cfg, bert, examples, length, seed=0):
  tokenizer = Tokenizer.load(builtin.TOKENIZER_FILE)
  encoded = cls.encode(examples, tokenizer, length).arrays
  model = BertForSequenceClassification(model_cfg, 2)
  inputs = [encoded[k] for k in ("input_ids", "segment_ids", "input_mask")]
  # The fine-tuning run draws the whole model from key(seed), then replaces
  # the encoder: the classifier's weights are those of this init.
  params = model.init(jax.random.key(seed), *[x[:1] for x in inputs])["params"]
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  params = {**nn.unbox(params), "bert": bert}
  logits = np.asarray(model.apply({"params": params}, *inputs), np.float64)
  log_probs = scipy.special.log_softmax(logits, axis=1)
  labels = encoded["labels"]
  return dict(eval_loss=-log_probs[np.arange(len(labels)), labels].mean(),
              eval_accuracy=(logits.argmax(1) == labels).mean())


@pytest.mark.slow
def test_a_hugging_face_start_is_exactly_those_weights(tmp_path, reviews_tsv):
  model_cfg = BertConfig.named("tiny", vocab_size=8000, scan_layers=False)
  ids = np.ones((1, 8), np.int32)
  params = BertForPreTraining(model_cfg).init(jax.random.key(42), ids, ids, ids, ids[:, :2])
  from flax import linen as nn  # pylint: disable=import-outside-toplevel
  params = nn.unbox(params)["params"]
  hf_dir = tmp_path / "hf"
  save_hf_bert(model_cfg, params, hf_dir,
               tokenizer={"tokenizer.model": builtin.TOKENIZER_FILE.read_bytes()})
  assert (hf_dir / "tokenizer.model").read_bytes() == builtin.TOKENIZER_FILE.read_bytes()

  c = task_config(reviews_tsv, steps=2)
  c.init.source = f"hf:{hf_dir}"
  finetuning.finetune(c, tmp_path / "w")
  first = next(line for line in metric_lines(tmp_path / "w") if line["step"] == 0)

  task = cls.resolve_task(c.task)
  validation = cls.load_split(task, "validation")
  loaded_cfg, loaded = load_hf_bert(hf_dir, heads=False)
  expected = evaluate_directly(loaded_cfg, loaded["bert"], validation, 24)
  assert abs(first["eval_loss"] - expected["eval_loss"]) < 1e-5
  assert first["eval_accuracy"] == expected["eval_accuracy"]


@pytest.mark.slow
def test_a_pretraining_run_starts_with_its_encoder(tmp_path, reviews_tsv, monkeypatch):
  corpus = tmp_path / "corpus.txt"
  rng = random.Random(1)
  corpus.write_text("\n\n".join("\n".join(review(rng, rng.random() < 0.5) + "."
                                          for _ in range(8)) for _ in range(30)) + "\n")
  p = pretrain_config.get_config()
  p.data.source, p.data.max_seq_length, p.data.max_predictions_per_seq = (
      f"text:{corpus}", 32, 5)
  p.train.update(batch_size=8, steps=3, warmup_steps=1, eval_batches=1,
                 checkpoint_every=3)
  p.probe.source = ""
  pretrained = tmp_path / "pretrain"
  train_and_evaluate(p, pretrained)

  c = task_config(reviews_tsv, steps=2)
  monkeypatch.chdir(tmp_path)
  c.init.source = "pretrain:pretrain"  # relative, like the default runs/pretrain
  c.model.scan_layers = False  # the run used scanned layers: re-laid out on load
  finetuning.finetune(c, tmp_path / "w")
  first = next(line for line in metric_lines(tmp_path / "w") if line["step"] == 0)

  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  from lmjax.trainer.checkpoints import Checkpoints  # pylint: disable=import-outside-toplevel
  assert Checkpoints(pretrained / "checkpoints").latest_step() == 3
  state = ocp.StandardCheckpointer().restore(pretrained / "checkpoints" / "3" / "state")
  from lmjax.model.encoder import unstack_layers  # pylint: disable=import-outside-toplevel
  bert = dict(state["params"]["bert"])
  bert["encoder"] = unstack_layers(bert["encoder"])
  model_cfg = BertConfig.named("tiny", vocab_size=8000, scan_layers=False)
  task = cls.resolve_task(c.task)
  expected = evaluate_directly(model_cfg, bert, cls.load_split(task, "validation"), 24)
  assert abs(first["eval_loss"] - expected["eval_loss"]) < 1e-5

  p.train.steps = 4  # a checkpoint of step 4, then damaged: the start falls back to 3
  train_and_evaluate(p, pretrained)
  for path in (pretrained / "checkpoints" / "4" / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(b"")
  summary = finetuning.finetune(c, tmp_path / "w2")
  assert summary["init"] == f"pretraining run {pretrained} (step 3)"
  assert (pretrained / "checkpoints" / "4").is_dir()  # another run's: not moved


def assert_user_error(c, workdir, message):
  before = tree_digest(workdir)
  with pytest.raises(UserError) as e:
    finetuning.finetune(c, workdir)
  assert message in str(e.value) and "\n" not in str(e.value)
  assert tree_digest(workdir) == before


@pytest.mark.slow
def test_bad_input_is_one_line_and_leaves_the_workdir_alone(trained, tmp_path,
                                                            reviews_tsv):
  workdir, _ = trained
  bad = tmp_path / "bad.tsv"
  lines = reviews_tsv.read_text().splitlines()
  bad.write_text("\n".join(lines[:50] + ["a film\tmaybe"] + lines[50:]) + "\n")
  c = task_config(bad)
  c.task.labels = "neg,pos"
  c.init.source = "random"
  assert_user_error(c, workdir, f"{bad}:51: unknown label 'maybe'")

  empty = tmp_path / "empty.tsv"
  empty.write_text("")
  c = task_config(empty)
  c.init.source = "random"
  assert_user_error(c, workdir, f"{empty}: empty file")

  c = task_config(reviews_tsv)
  c.init.source, c.task.label_field = "random", "stars"
  assert_user_error(c, workdir, "no column 'stars' (columns: text, label)")

  other = tmp_path / "other.model"
  tokenization.train([f"word{i} and more words {i % 7}" for i in range(3000)], 64,
                      other, progress=lambda _: None)
  c = task_config(reviews_tsv)
  c.init.source = f"hf:{tmp_path / 'hf'}"
  model_cfg = BertConfig.named("tiny", vocab_size=8000)
  params = BertForPreTraining(model_cfg).init(
      jax.random.key(0), *[np.ones((1, 8), np.int32)] * 3, np.ones((1, 2), np.int32))
  save_hf_bert(model_cfg, params["params"], tmp_path / "hf")  # no tokenizer.model
  c.task.tokenizer = str(other)
  assert_user_error(c, workdir, "its tokenizer has 64 pieces but the model's vocabulary "
                                "has 8000 rows")
  c.task.tokenizer = ""
  assert_user_error(c, workdir, "no tokenizer (tokenizer.model, tokenizer.json, vocab.txt)")

  c = task_config(reviews_tsv)
  c.init.source, c.task.regression, c.task.metrics = "random", True, "accuracy"
  with pytest.raises(UserError, match="is a regression task; use pearson or spearman"):
    finetuning.finetune(c, workdir)

  c = task_config(reviews_tsv)
  c.init.source = f"pretrain:{tmp_path / 'no_such_run'}"
  assert_user_error(c, workdir, "not a pretraining workdir")
  c.init.source = f"pretrain:{workdir}"  # a fine-tuning workdir
  assert_user_error(c, workdir, "not a pretraining workdir (its config.json has no data "
                                "section")


@pytest.mark.slow
def test_the_entry_point_exits_2_with_one_line(tmp_path, reviews_tsv):
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "metrics.jsonl").write_text('{"step": 1}\n')
  done = subprocess.run(
      [sys.executable, "-m", "lmjax.finetune", f"--config={ROOT}/configs/finetune.py",
       f"--workdir={tmp_path / 'w'}", f"--config.task.source=tsv:{reviews_tsv}",
       "--config.task.labels=pos,meh", "--config.init.source=random"],
      capture_output=True, text=True, cwd=ROOT, check=False)
  assert done.returncode == 2, done.stderr[-2000:]
  (line,) = done.stderr.strip().splitlines()
  assert line.startswith(f"error: {reviews_tsv}:") and "unknown label 'neg'" in line
  assert (tmp_path / "w" / "metrics.jsonl").read_text() == '{"step": 1}\n'
  assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["metrics.jsonl"]

  for flag, message in [
      (f"--config.init.source=pretrain:{tmp_path / 'no_run'}",
       f"config.init.source=pretrain:{tmp_path / 'no_run'}: not a pretraining workdir"),
      ("--config.init.source=nope:x",
       "config.init.source must be pretrain:DIR, hf:DIR or random, got 'nope:x'"),
      ("--config.init.from=runs/pretrain", "no config field 'init.from'")]:
    done = subprocess.run(
        [sys.executable, "-m", "lmjax.finetune", f"--config={ROOT}/configs/finetune.py",
         f"--workdir={tmp_path / 'w'}", flag],
        capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert message in line


@pytest.mark.parametrize("field,value,message", [
    ("init.source", "nope:x", "config.init.source must be pretrain:DIR, hf:DIR or random"),
    ("init.source", "pretrain:", "config.init.source must be pretrain:DIR"),
    ("mode", "serve", "config.mode must be train or predict"),
    ("task.metrics", "accuracy,bleu", "config.task.metrics: unknown metric 'bleu'"),
    ("task.max_seq_length", 2, "config.task.max_seq_length must be at least 4"),
    ("task.packed_length", 0, "config.task.packed_length must be at least 4"),
    ("task.num_threads", -1, "config.task.num_threads must be at least 0"),
    ("task.group_by_length", -1, "config.task.group_by_length must be at least 0"),
    ("task.tokenizer", "learn:8000", "config.task.tokenizer must be a file: learn:N is for "
     "pretraining (config.data.tokenizer)"),
    ("train.epochs", 0.0, "config.train.epochs must be positive"),
    ("train.warmup_fraction", 1.0, "config.train.warmup_fraction must be in [0, 1)"),
    ("train.profile_steps", "3", "config.train.profile_steps must be START,END"),
    ("train.learning_rate", -1.0, "config.train.learning_rate must be positive"),
    ("model.remat_policy", "all", "config.model.remat_policy must be one of"),
])
def test_the_whole_config_is_checked_in_one_place(field, value, message):
  c = finetune_config.get_config()
  section, _, name = field.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    finetuning.check_config(c)
  c = finetune_config.get_config()
  c.mode = "predict"
  with pytest.raises(ConfigError, match="config.predict.input is required"):
    finetuning.check_config(c)
  finetuning.check_config(finetune_config.get_config())  # the defaults pass
