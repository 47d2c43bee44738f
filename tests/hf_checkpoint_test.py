"""Hugging Face BERT directories end to end: one written by transformers
(weights and WordPiece tokenizer) fine-tuned and further pretrained by
lmjax, and lmjax workdirs exported back, against transformers' outputs."""

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402 (after the importorskips)
from helpers import build_vocab, pretrain_config, review  # noqa: E402
from helpers import task_config as finetune_config  # noqa: E402

from lmjax import parallel  # noqa: E402
from lmjax.data import tasks  # noqa: E402
from lmjax.data.pretrain_input import pretraining_input  # noqa: E402
from lmjax.data.tokenization import Tokenizer  # noqa: E402
from lmjax.errors import UserError  # noqa: E402
from lmjax.interop.hf import load_hf_bert  # noqa: E402
from lmjax.model import BertForPreTraining, BertForSequenceClassification  # noqa: E402
from lmjax.model import architectures  # noqa: E402
from lmjax.model.encoder import BertModel  # noqa: E402
from lmjax.runs import export, finetuning, init_sources, prediction  # noqa: E402
from lmjax.runs.pretraining import train_and_evaluate  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_dirs")]
ROOT = Path(__file__).parents[1]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Café crème, naïve façade!",
         "Unbelievable results [MASK] reported.", "中文 and 123"]


def hf_config(vocab_size: int):
  return transformers.BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128,
                                 max_position_embeddings=64)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A BertForPreTraining and its uncased WordPiece tokenizer, as
  transformers' save_pretrained writes them (tokenizer.json, no vocab.txt)."""
  root = tmp_path_factory.mktemp("hf")
  vocab = build_vocab(root / "vocab.txt", lowercase=True)
  tokenizer = transformers.BertTokenizer(str(root / "vocab.txt"), do_lower_case=True)
  torch.manual_seed(0)
  model = transformers.BertForPreTraining(hf_config(len(vocab))).eval()
  directory = root / "model"
  model.save_pretrained(directory)
  tokenizer.save_pretrained(directory)
  return directory


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
  rng = random.Random(0)
  path = tmp_path_factory.mktemp("task") / "reviews.tsv"
  rows = [f"{review(rng, i % 2 == 0)}\t{'pos' if i % 2 == 0 else 'neg'}" for i in range(240)]
  path.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
  return path


def lmjax_pooled(model_cfg, bert, ids, segments, mask):
  _, pooled = BertModel(model_cfg).apply({"params": bert}, ids, segments, mask)
  return np.asarray(pooled)


def test_a_transformers_directory_starts_lmjax_at_its_outputs(hf_dir):
  ours = Tokenizer.load(hf_dir)
  theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
  encoded = theirs(TEXTS, padding=True, return_tensors="pt")
  assert [ids.tolist() for ids in ours.encode(TEXTS)] == [
      theirs(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
  ids = tasks.encode(tasks.Examples([(t,) for t in TEXTS], None), ours,
                     encoded["input_ids"].shape[1]).arrays
  assert ids["input_ids"].tolist() == encoded["input_ids"].tolist()
  model_cfg, params = load_hf_bert(hf_dir, heads=False, scan_layers=False)
  pooled = lmjax_pooled(model_cfg, params["bert"], ids["input_ids"], ids["segment_ids"],
                        ids["input_mask"])
  with torch.no_grad():
    expected = transformers.BertModel.from_pretrained(hf_dir).eval()(**encoded).pooler_output
  np.testing.assert_allclose(pooled, expected.numpy(), atol=1e-5)


def test_a_transformers_classifier_starts_lmjax_at_exactly_its_logits(hf_dir, reviews,
                                                                     tmp_path):
  torch.manual_seed(1)
  hf_model = transformers.BertForSequenceClassification.from_pretrained(hf_dir, num_labels=2)
  hf_model.save_pretrained(tmp_path / "cls")
  transformers.AutoTokenizer.from_pretrained(hf_dir).save_pretrained(tmp_path / "cls")
  c = finetune_config(reviews, steps=2, eval_every=2)
  c.init.source = f"hf:{tmp_path / 'cls'}"
  summary = finetuning.finetune(c, tmp_path / "run")
  assert summary["init"].endswith("with its classifier")
  first = next(json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines() if json.loads(line)["step"] == 0)
  task = tasks.resolve_task(c.task)
  validation = tasks.load_split(task, "validation")
  encoded = transformers.AutoTokenizer.from_pretrained(tmp_path / "cls")(
      [t[0] for t in validation.texts], padding="max_length", max_length=24, truncation=True,
      return_tensors="pt")
  with torch.no_grad():
    out = hf_model.eval()(**encoded, labels=torch.tensor(validation.labels, dtype=torch.long))
  assert abs(first["eval_loss"] - out.loss.item()) < 1e-5


@pytest.fixture(scope="module")
def fine_tuned(hf_dir, reviews, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ft") / "run"
  c = finetune_config(reviews, steps=6, eval_every=3, log_every=1)
  c.init.source = f"hf:{hf_dir}"
  summary = finetuning.finetune(c, workdir)
  return workdir, summary, c


def test_fine_tuning_a_transformers_directory_uses_its_tokenizer(fine_tuned, hf_dir, tmp_path):
  workdir, summary, c = fine_tuned
  assert summary["init"] == f"Hugging Face BERT {hf_dir}"
  assert (workdir / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
  assert Tokenizer.load(workdir).fingerprint == Tokenizer.load(hf_dir).fingerprint
  (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
  c.mode, c.predict.input = "predict", str(tmp_path / "texts.txt")
  out = prediction.predict(c, workdir)
  assert out["predictions"] == len(TEXTS)


def test_an_exported_classifier_gives_lmjax_logits_in_transformers(fine_tuned, tmp_path):
  workdir, summary, _ = fine_tuned
  written = export.export(workdir, tmp_path / "out")
  assert written["architecture"] == "BertForSequenceClassification"
  assert written["step"] == summary["best_step"] and written["labels"] == ["neg", "pos"]
  theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "out").eval()
  assert hf_model.config.id2label == {0: "neg", 1: "pos"}
  from_vocab = transformers.BertTokenizer(str(tmp_path / "out" / "vocab.txt"))
  assert [from_vocab(t)["input_ids"] for t in TEXTS] == [theirs(t)["input_ids"] for t in TEXTS]
  encoded = theirs(TEXTS, padding="max_length", max_length=24, truncation=True,
                   return_tensors="pt")
  with torch.no_grad():
    expected = hf_model(**encoded).logits.numpy()
  model_cfg = architectures.from_dict(json.loads((workdir / "model.json").read_text()))
  model = BertForSequenceClassification(model_cfg, 2)
  ids = tasks.encode(tasks.Examples([(t,) for t in TEXTS], None), Tokenizer.load(workdir),
                     24).arrays
  step, params = init_sources.best_params(workdir, model, {k: v[:1] for k, v in ids.items()},
                                          parallel.make_mesh())
  assert step == summary["best_step"]
  logits = np.asarray(model.apply({"params": params}, ids["input_ids"], ids["segment_ids"],
                                  ids["input_mask"]))
  np.testing.assert_allclose(logits, expected, atol=1e-4)
  again_cfg, again = load_hf_bert(tmp_path / "out", heads=False,
                                  scan_layers=model.config.scan_layers)
  for a, b in zip(jax.tree.leaves(again["bert"]), jax.tree.leaves(params["bert"]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_continued_pretraining_starts_from_the_transformers_weights(hf_dir, tmp_path):
  corpus = tmp_path / "corpus.txt"
  rng = random.Random(5)
  corpus.write_text("\n\n".join("\n".join(review(rng, rng.random() < 0.5) + "."
                                          for _ in range(8)) for _ in range(30)) + "\n")
  p = pretrain_config.get_config()
  p.init.source = f"hf:{hf_dir}"
  p.data.source, p.data.max_seq_length, p.data.max_predictions_per_seq = (
      f"text:{corpus}", 32, 5)
  p.data.packing_window = 1  # the first step holds the first batch's pairs, as unpacked
  p.model.dropout_rate = p.model.attention_dropout_rate = 0.0
  p.train.update(batch_size=8, steps=2, warmup_steps=1, eval_batches=1, log_every=1,
                 checkpoint_every=2)
  p.probe.source = ""
  workdir = tmp_path / "pretrain"
  train_and_evaluate(p, workdir)
  first = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])
  assert first["step"] == 1

  data = p.data.copy_and_resolve_references()
  data.tokenizer = str(hf_dir)
  batches, tokenizer, _ = pretraining_input(data, 8, p.seed, "train")
  batch = batches[0]
  hf_model = transformers.BertForPreTraining.from_pretrained(hf_dir).eval()
  labels = np.full(batch["input_ids"].shape, -100)
  for row, (positions, ids, weights) in enumerate(zip(
      batch["masked_positions"], batch["masked_ids"], batch["masked_weights"], strict=True)):
    for pos, target, w in zip(positions, ids, weights, strict=True):
      if w:
        labels[row, pos] = target
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                   token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
                   attention_mask=torch.tensor(batch["input_mask"], dtype=torch.long),
                   labels=torch.tensor(labels), next_sentence_label=torch.tensor(
                       batch["nsp_labels"], dtype=torch.long))
  assert abs(first["loss"] - out.loss.item()) < 1e-4 * out.loss.item()

  written = export.export(workdir, tmp_path / "out")
  assert written["architecture"] == "BertForPreTraining" and written["step"] == 2
  exported = transformers.BertForPreTraining.from_pretrained(tmp_path / "out").eval()
  assert exported.config.vocab_size == tokenizer.vocab_size
  assert (tmp_path / "out" / "tokenizer.json").is_file()
  model_cfg, params = load_hf_bert(tmp_path / "out", scan_layers=False, dropout_rate=0.0,
                                   attention_dropout_rate=0.0)
  ours = BertForPreTraining(model_cfg).apply(
      {"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
      batch["masked_positions"])
  mlm_logits, nsp_logits = ours["mlm_logits"], ours["nsp_logits"]
  with torch.no_grad():
    theirs = exported(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                      token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long),
                      attention_mask=torch.tensor(batch["input_mask"], dtype=torch.long))
  at = np.take_along_axis(theirs.prediction_logits.numpy(),
                          batch["masked_positions"][..., None], axis=1)
  np.testing.assert_allclose(np.asarray(mlm_logits), at, atol=1e-4)
  np.testing.assert_allclose(np.asarray(nsp_logits), theirs.seq_relationship_logits.numpy(),
                             atol=1e-4)


def test_export_bad_input_is_one_line(fine_tuned, tmp_path):
  workdir, _, _ = fine_tuned
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("x")
  cases = [(tmp_path / "nothing", tmp_path / "o1", "not an lmjax workdir"),
           (workdir, tmp_path / "full", "exists and is not empty"),
           (workdir, "gs://bucket/out", "write a local directory"),
           (workdir, "", "--output is empty"), ("", tmp_path / "o3", "--workdir is empty"),
           (workdir, tmp_path / "full" / "keep.txt", "is a file, not a directory")]
  for source, output, message in cases:
    with pytest.raises(UserError, match=message):
      export.export(source, output)
  assert (tmp_path / "full" / "keep.txt").read_text() == "x"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
  done = subprocess.run([sys.executable, "-m", "lmjax.export", f"--workdir={tmp_path / 'no'}",
                         f"--output={tmp_path / 'o2'}"], capture_output=True, text=True,
                        cwd=ROOT, check=False)
  assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
  assert done.stderr.startswith("error: ") and "not an lmjax workdir" in done.stderr
  (tmp_path / "out.tmp-999999").mkdir()  # left by an export killed midway
  export.export(workdir, tmp_path / "out")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "out"]


def test_a_directory_without_tokenizer_or_with_another_vocabulary_is_one_line(
    hf_dir, reviews, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  bare = tmp_path / "bare"
  shutil.copytree(hf_dir, bare)
  (bare / "tokenizer.json").unlink()
  c = finetune_config(reviews, steps=2)
  c.init.source = f"hf:{bare}"
  with pytest.raises(UserError, match="no tokenizer"):
    finetuning.finetune(c, tmp_path / "w1")
  (bare / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
  with pytest.raises(UserError, match="6 pieces but the model's vocabulary has"):
    finetuning.finetune(c, tmp_path / "w2")
  assert not (tmp_path / "w1").exists() and not (tmp_path / "w2").exists()
