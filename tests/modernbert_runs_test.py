"""ModernBERT through lmjax's runs: config.model.architecture=modernbert in
pretraining (MLM alone), fine-tuning from that run, predict, export to a
directory transformers loads, `hf:DIR` back, resume, sharding; and the bad
configs it refuses."""

import json
import random
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import ROOT, dot_flops, finetune_config, pretrain_config, review, review_corpus

from lmjax import config_sections, parallel
from lmjax.data import tasks
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import CheckpointError, ConfigError, UserError
from lmjax.model import architectures, costs
from lmjax.model.config import BertConfig
from lmjax.model.modernbert import ModernBertConfig, ModernBertForMaskedLM
from lmjax.runs import export, finetuning, init_sources, prediction, pretraining
from lmjax.trainer.scaffold import check_resumable


def modernbert_pretraining(corpus, workdir_steps=12, **train):
  config = pretrain_config.get_config("modernbert")
  config.data.update(source=f"text:{corpus}", max_seq_length=32, max_predictions_per_seq=10)
  config.train.update(dict(batch_size=16, steps=workdir_steps, warmup_steps=2, log_every=1,
                           eval_every=6, eval_batches=2, checkpoint_every=6), **train)
  config.probe.source = ""
  return config


# -- the model section ------------------------------------------------------


@pytest.mark.parametrize("fields,message", [
    (dict(architecture="gpt"), "config.model.architecture must be one of bert, modernbert"),
    (dict(architecture="modernbert", size="mini"),
     "config.model.size must be one of tiny, base, large for architecture=modernbert"),
    (dict(architecture="modernbert", local_window=127), "config.model.local_window must be even"),
    (dict(architecture="modernbert", global_every=0),
     "config.model.global_every must be a positive"),
    (dict(architecture="modernbert", classifier_pooling="max"),
     "config.model.classifier_pooling must be one of cls, mean"),
    (dict(classifier_pooling="max"), "config.model.classifier_pooling must be one of cls, mean"),
    (dict(architecture="modernbert", dropout_rate=1.5), "config.model.dropout_rate must be"),
    (dict(local_window=64), "config.model.local_window is ModernBERT's; with "
                            "config.model.architecture=bert leave it at 128"),
    (dict(architecture="modernbert", nsp_weight=1.0),
     "config.train.nsp_weight must be 0 with config.model.architecture=modernbert"),
    (dict(architecture="modernbert", nsp_weight=0.0, cp_weight=0.1),
     "config.train.cp_weight must be 0 with config.model.architecture=modernbert"),
])
def test_a_model_section_no_architecture_can_make_is_refused(fields, message):
  config = pretrain_config.get_config()
  for name, value in fields.items():
    (config.train if name.endswith("_weight") else config.model)[name] = value
  with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
    pretraining.check_config(config)


def test_the_section_and_a_model_json_give_each_architecture_its_config():
  section = config_sections.model()
  bert = architectures.from_section(section, vocab_size=100)
  assert isinstance(bert, BertConfig) and bert.dropout_rate == 0.1 and bert.num_layers == 2
  section.update(architecture="modernbert", dropout_rate=0.2, attention_dropout_rate=0.05,
                 local_window=16, classifier_pooling="mean")
  modern = architectures.from_section(section, vocab_size=100)
  assert isinstance(modern, ModernBertConfig) and modern.num_layers == 3
  assert (modern.embedding_dropout_rate, modern.mlp_dropout_rate,
          modern.classifier_dropout_rate, modern.attention_dropout_rate) == (0.2, 0.2, 0.2, 0.05)
  assert (modern.local_window, modern.classifier_pooling, modern.max_position) == (16, "mean",
                                                                                   512)
  for cfg in (bert, modern):
    assert architectures.from_dict(json.loads(json.dumps(architectures.to_dict(cfg)))) == cfg
  written_before = {k: v for k, v in architectures.to_dict(bert).items() if k != "architecture"}
  assert architectures.from_dict(written_before) == bert
  # A checkpoint's config takes a run's runtime fields, pooling included.
  runtime = architectures.with_runtime(modern.replace(classifier_pooling="cls"), dict(
      section, dropout_rate=0.0, dtype="bfloat16", local_window=999))
  assert runtime.mlp_dropout_rate == 0.0 and runtime.dtype == "bfloat16"
  assert runtime.classifier_pooling == "mean" and runtime.local_window == 16


def test_a_run_saved_before_the_architecture_field_resumes():
  config = pretrain_config.get_config()
  saved = json.loads(config.to_json())
  for name in config_sections.ADDED_MODEL_FIELDS:
    del saved["model"][name]
  check_resumable(config_sections.with_added_fields(saved, config), config, ("model",))
  config.model.architecture = "modernbert"
  with pytest.raises(Exception, match="another config.model"):
    check_resumable(config_sections.with_added_fields(saved, config), config, ("model",))
  defaults = ModernBertConfig()
  assert {k: getattr(defaults, k) for k in (*architectures.MODERNBERT_FIELDS,
                                            "classifier_pooling")} == {
      k: v for k, v in config_sections.ADDED_MODEL_FIELDS.items() if k != "architecture"}


def test_modernbert_flops_are_its_matmuls_and_a_window_counts_its_keys():
  cfg = ModernBertConfig(vocab_size=300, hidden_size=32, num_layers=4, num_heads=4,
                         intermediate_size=48, local_window=64, global_every=3)
  batch, length, preds = 3, 20, 5
  ids = jnp.zeros((batch, length), jnp.int32)
  positions = jnp.zeros((batch, preds), jnp.int32)
  model = ModernBertForMaskedLM(cfg)
  variables = model.init(jax.random.key(0), ids, ids + 1, positions)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, ids, ids + 1, positions))(variables)
  # A window wider than the sequence: every layer's attention is dense.
  assert dot_flops(jaxpr.jaxpr) == batch * costs.forward_flops(cfg, length, preds)
  narrow = cfg.replace(local_window=4)
  d = cfg.hidden_size
  local_layers = 2  # of 4, global every 3rd from the first
  assert costs.forward_flops(cfg, length, preds) - costs.forward_flops(narrow, length, preds) \
      == local_layers * 2 * 2 * length * (length - 5) * d


def test_the_command_refuses_a_bad_architecture_in_one_line(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "lmjax.pretrain", f"--config={ROOT}/configs/pretrain.py",
       f"--workdir={tmp_path / 'w'}", "--config.model.architecture=modernbert"],
      capture_output=True, text=True, cwd=ROOT, check=False)
  assert done.returncode == 2, done.stderr
  assert done.stderr.strip() == (
      "error: config.train.nsp_weight must be 0 with config.model.architecture=modernbert "
      "(its model has no NSP head and no pooled output: it pretrains with MLM alone); add "
      "--config.train.nsp_weight=0")
  assert not (tmp_path / "w").exists()


# -- sharding ---------------------------------------------------------------


@pytest.mark.slow
def test_modernbert_gradients_on_a_data_fsdp_tensor_mesh_are_those_of_one_device():
  cfg = ModernBertConfig.named("tiny", vocab_size=120, local_window=4, scan_layers=True,
                               remat_policy="dots")
  model = ModernBertForMaskedLM(cfg)
  rng = np.random.default_rng(0)
  lengths = np.array([16, 9, 3, 12, 16, 5, 7, 11])
  batch = dict(input_ids=rng.integers(5, 120, (8, 16)).astype(np.int32),
               input_mask=(np.arange(16)[None] < lengths[:, None]).astype(np.int32),
               masked_positions=rng.integers(0, 3, (8, 4)).astype(np.int32))

  def loss(params, batch):
    return jax.nn.logsumexp(model.apply({"params": params}, **batch)["mlm_logits"], -1).mean()

  params = nn.unbox(model.init(jax.random.key(1), **batch))["params"]
  want = jax.jit(jax.grad(loss))(params, batch)
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  variables, shardings = parallel.sharded_init(
      lambda k: model.init(k, **batch), mesh, jax.random.key(1))
  assert any(s.spec != jax.sharding.PartitionSpec()
             for s in jax.tree.leaves(shardings["params"]))  # something is sharded
  with parallel.sharding_context(mesh):
    got = jax.jit(jax.grad(loss), out_shardings=shardings["params"])(
        variables["params"], parallel.shard_batch(batch, mesh))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), got, want)


# -- end to end -------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return review_corpus(tmp_path_factory.mktemp("corpus") / "reviews.txt", 60, 6, seed=3)


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("modernbert") / "pretrain"
  summary = pretraining.train_and_evaluate(modernbert_pretraining(corpus), workdir)
  return workdir, summary


def metric_lines(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.usefixtures("data_dirs")
def test_modernbert_pretrains_with_mlm_alone_and_resumes_exactly(pretrained, corpus,
                                                                 tmp_path):
  workdir, summary = pretrained
  assert json.loads((workdir / "model.json").read_text())["architecture"] == "modernbert"
  lines = [line for line in metric_lines(workdir) if "loss" in line]
  assert [line["step"] for line in lines] == list(range(1, 13))
  assert all("nsp_loss" not in line and "mlm_loss" in line for line in lines)
  assert np.mean([x["loss"] for x in lines[-3:]]) < np.mean([x["loss"] for x in lines[:3]]) - 1
  assert summary["step"] == 12 and "eval_mlm_accuracy" in summary
  assert not any("nsp" in key for key in summary)
  # The run again from its checkpoint of step 6 repeats steps 7 to 12.
  again = tmp_path / "again"
  shutil.copytree(workdir, again)
  shutil.rmtree(again / "checkpoints" / "12")
  pretraining.train_and_evaluate(modernbert_pretraining(corpus), again)
  resumed = {x["step"]: x["loss"] for x in metric_lines(again) if "loss" in x}
  assert {s: resumed[s] for s in range(7, 13)} == {x["step"]: x["loss"] for x in lines[6:]}


@pytest.mark.slow
@pytest.mark.usefixtures("data_dirs")
def test_fine_tuning_starts_from_the_pretraining_run_then_predicts_and_exports(
    pretrained, reviews_tsv, tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  workdir, _ = pretrained
  c = finetune_config.get_config()
  c.task.source, c.task.max_seq_length = f"tsv:{reviews_tsv}", 24
  c.train.update(batch_size=16, steps=4, eval_every=2, log_every=2)
  c.init.source = f"pretrain:{workdir}"
  c.model.update(architecture="modernbert", classifier_pooling="mean", scan_layers=False)
  summary = finetuning.finetune(c, tmp_path / "ft")
  assert summary["init"] == f"pretraining run {workdir} (step 12)"
  model_cfg = architectures.from_dict(json.loads((tmp_path / "ft" / "model.json").read_text()))
  assert model_cfg.classifier_pooling == "mean" and not model_cfg.scan_layers

  # The classifier's encoder and head are the pretraining run's.
  start = init_sources.load_start(c, parallel.make_mesh(), 2)
  assert sorted(start.params) == ["head", "model"]
  saved = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  pretrained_cfg = init_sources.pretraining_model(workdir, saved, start.tokenizer)
  _, state = init_sources.pretrained_params(workdir, "test", pretrained_cfg, saved.data,
                                            parallel.make_mesh())
  for a, b in zip(jax.tree.leaves(start.params["head"]), jax.tree.leaves(state["head"]),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  (tmp_path / "texts.txt").write_text("a warm and moving story\nthe plot is dull\n")
  c.mode, c.predict.input = "predict", str(tmp_path / "texts.txt")
  assert prediction.predict(c, tmp_path / "ft")["predictions"] == 2

  written = export.export(tmp_path / "ft", tmp_path / "hf")
  assert written["architecture"] == "ModernBertForSequenceClassification"
  theirs = transformers.AutoModelForSequenceClassification.from_pretrained(
      tmp_path / "hf").eval()
  texts = [(review(random.Random(i), i % 2 == 0),) for i in range(5)]
  ids = tasks.encode(tasks.Examples(texts, None), Tokenizer.load(tmp_path / "ft"), 24).arrays
  model = architectures.classification_model(model_cfg, 2)
  step, params = init_sources.best_params(tmp_path / "ft", model,
                                          {k: v[:1] for k, v in ids.items()},
                                          parallel.make_mesh())
  ours = np.asarray(model.apply({"params": params}, ids["input_ids"], ids["input_mask"]))
  with torch.no_grad():
    expected = theirs(input_ids=torch.tensor(ids["input_ids"]).long(),
                      attention_mask=torch.tensor(ids["input_mask"]).long()).logits.numpy()
  np.testing.assert_allclose(ours, expected, atol=1e-4)

  # hf:DIR starts a run at exactly the exported weights.
  c.mode, c.init.source = "train", f"hf:{tmp_path / 'hf'}"
  back = init_sources.load_start(c, parallel.make_mesh(), 2)
  assert back.origin == f"Hugging Face ModernBERT {tmp_path / 'hf'} with its classifier"
  for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(
      {k: params[k] for k in back.params}), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c.model.architecture = "bert"
  with pytest.raises(ConfigError, match="is a modernbert model, but config.model.architecture"):
    init_sources.load_start(c, parallel.make_mesh(), 2)

  written = export.export(workdir, tmp_path / "mlm")
  assert written["architecture"] == "ModernBertForMaskedLM"
  mlm = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm")
  assert type(mlm).__name__ == "ModernBertForMaskedLM"


@pytest.fixture(scope="module")
def hf_modernbert_dir(tmp_path_factory):
  """A transformers ModernBertForMaskedLM with a byte-level BPE tokenizer
  (BERT's special tokens, as ModernBERT's has), as save_pretrained writes
  them."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  from tokenizers import ByteLevelBPETokenizer, processors  # pylint: disable=import-outside-toplevel
  rng = random.Random(5)
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator([review(rng, i % 2 == 0) + "." for i in range(400)], vocab_size=300,
                          special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
  bpe.post_processor = processors.TemplateProcessing(  # ModernBERT's: [CLS] A [SEP]
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe._tokenizer,  # pylint: disable=protected-access
      pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
      mask_token="[MASK]")
  vocab = fast.get_vocab()
  config = transformers.ModernBertConfig(
      vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
      intermediate_size=48, local_attention=8, max_position_embeddings=64,
      pad_token_id=vocab["[PAD]"], cls_token_id=vocab["[CLS]"], sep_token_id=vocab["[SEP]"],
      bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"])
  torch.manual_seed(0)
  model = transformers.ModernBertForMaskedLM(config).eval()
  with torch.no_grad():
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  directory = tmp_path_factory.mktemp("hf") / "modernbert"
  model.save_pretrained(directory)
  fast.save_pretrained(directory)
  return directory, model


@pytest.mark.slow
@pytest.mark.usefixtures("data_dirs")
def test_a_transformers_modernbert_with_its_bpe_tokenizer_starts_lmjax_at_its_outputs(
    hf_modernbert_dir, reviews_tsv):
  torch = pytest.importorskip("torch")
  directory, reference = hf_modernbert_dir
  c = finetune_config.get_config()
  c.task.source, c.init.source = f"tsv:{reviews_tsv}", f"hf:{directory}"
  c.model.update(architecture="modernbert", scan_layers=False)
  start = init_sources.load_start(c, parallel.make_mesh(), 2)
  assert start.origin == f"Hugging Face ModernBERT {directory}"
  assert sorted(start.params) == ["head", "model"]  # the masked LM's decoder bias is not read
  assert start.tokenizer.model_type == "BPE" and start.tokenizer.vocab_size == 300
  texts = [review(random.Random(i), i % 2 == 0) for i in range(6)] + ["[MASK] is a plot"]
  transformers = pytest.importorskip("transformers")
  theirs = transformers.AutoTokenizer.from_pretrained(directory)
  encoded = tasks.encode(tasks.Examples([(t,) for t in texts], None), start.tokenizer, 24)
  for row, text in zip(encoded.arrays["input_ids"], texts, strict=True):
    ids = theirs(text)["input_ids"]  # [CLS] ... [SEP], as lmjax encodes
    assert list(row[:len(ids)]) == ids and not row[len(ids):].any()
  from lmjax.model.modernbert import ModernBertModel  # pylint: disable=import-outside-toplevel
  ours = ModernBertModel(start.config).apply({"params": start.params["model"]},
                                             encoded.arrays["input_ids"],
                                             encoded.arrays["input_mask"])
  with torch.no_grad():
    expected = reference.model(
        input_ids=torch.tensor(encoded.arrays["input_ids"]).long(),
        attention_mask=torch.tensor(encoded.arrays["input_mask"]).long()).last_hidden_state
  mask = encoded.arrays["input_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(ours)[mask], expected.numpy()[mask], atol=1e-5)
  # Whole-word masking knows a byte-level word start (its space, Ġ).
  starts = start.tokenizer.word_start_V
  pieces = start.tokenizer.pieces(range(start.tokenizer.vocab_size))
  assert all(starts[i] == (p.startswith("\u0120") or i in (0, 1, 2, 3, 4))
             for i, p in enumerate(pieces) if p)


@pytest.mark.slow
@pytest.mark.usefixtures("data_dirs")
def test_a_directory_of_another_model_type_or_misshapen_weights_is_one_line(
    hf_modernbert_dir, reviews_tsv, tmp_path):
  directory, _ = hf_modernbert_dir
  c = finetune_config.get_config()
  c.task.source, c.model.architecture = f"tsv:{reviews_tsv}", "modernbert"
  for name, change, error, message in (
      ("roberta", dict(model_type="roberta"), UserError,
       "model_type 'roberta'; lmjax reads bert and modernbert directories"),
      ("wider", dict(intermediate_size=64), CheckpointError,
       "tensor model.layers.0.mlp.Wi.weight has shape (96, 32), config.json implies "
       "(128, 32)"),
      ("odd_window", dict(local_attention=7), UserError, "local_window must be even")):
    copy = tmp_path / name
    shutil.copytree(directory, copy)
    hf_config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**hf_config, **change}))
    c.init.source = f"hf:{copy}"
    with pytest.raises(error) as raised:
      init_sources.load_start(c, parallel.make_mesh(), 2)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_fine_tuning_takes_its_own_dropout_for_an_encoder_pretrained_without():
  for architecture in ("bert", "modernbert"):
    section = config_sections.model()
    section.update(architecture=architecture, dropout_rate=0.0, attention_dropout_rate=0.0)
    pretrained = architectures.from_section(section, vocab_size=100)
    section.update(dropout_rate=0.1, attention_dropout_rate=0.1)
    tuned = architectures.with_runtime(pretrained, section)
    assert tuned.attention_dropout_rate == 0.1 and tuned != pretrained
    assert tuned.replace(**architectures.runtime_fields(architecture, {
        "dropout_rate": 0.0, "attention_dropout_rate": 0.0})) == pretrained
