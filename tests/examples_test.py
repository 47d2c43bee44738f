"""The research scripts of examples/, each run in-process on a tiny setting
(the two that train, in the slow tier): what they return is checked
against the model, and their pictures must exist and load; their bad
inputs end in one line, status 2."""

import ast
import importlib.util
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from helpers import ROOT, pretrain_config
from lmjax import config_sections, scripts
from lmjax.data import builtin, tasks
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import UserError
from lmjax.model import architectures
from lmjax.model.internals import apply_with_internals
from lmjax.runs import pretraining, trained

pytestmark = pytest.mark.usefixtures("data_dirs")
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py"))


def script(name: str):
  spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def picture(path: Path) -> np.ndarray:
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and min(image.shape[:2]) > 100
  return image


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """BERT-tiny pretrained for 6 steps of 8 pairs of 32 tokens."""
  config = pretrain_config.get_config()
  config.data.update(max_seq_length=32, max_predictions_per_seq=5)
  config.train.update(batch_size=8, steps=6, warmup_steps=2, log_every=3, eval_every=6,
                      eval_batches=1, checkpoint_every=6)
  config.probe.source = ""
  workdir = tmp_path_factory.mktemp("runs") / "pretrain"
  pretraining.train_and_evaluate(config, workdir)
  return workdir


def test_scripts_are_short_and_use_only_public_names():
  assert SCRIPTS == ["attention_maps", "embeddings", "layer_probe",
                     "replaced_token_detection", "sharding"]
  for name in SCRIPTS:
    source = (EXAMPLES / f"{name}.py").read_text()
    assert len(source.splitlines()) <= 150, name
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.ImportFrom) and node.module.startswith("lmjax"):
        assert not any(a.name.startswith("_") for a in node.names), (name, node.module)
        assert not any(part.startswith("_") for part in node.module.split(".")), name
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        private = node.attr.startswith("_") and not node.attr.startswith("__")
        assert not private, (name, node.attr)


def test_attention_maps(workdir, tmp_path):
  attention = script("attention_maps")
  out = attention.main([f"--workdir={workdir}", "--text=Emma smiled at him.",
                        "--pair=He did not smile back.", f"--output={tmp_path}"])
  probs, tokens = out["probs"], out["tokens"]
  assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
  assert probs.shape == (2, 2, len(tokens), len(tokens))  # tiny: 2 layers of 2 heads
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  assert (out["entropy"] > 0).all() and (out["entropy"] <= np.log2(len(tokens)) + 1e-6).all()
  picture(tmp_path / "attention.png")
  picture(tmp_path / "entropy.png")
  with pytest.raises(UserError, match="positions"):
    attention.main([f"--workdir={workdir}", "--text=" + "word " * 600,
                    f"--output={tmp_path / 'long'}"])
  assert not (tmp_path / "long").exists()


def test_layer_probe(workdir, reviews_tsv, tmp_path):
  probe = script("layer_probe")
  args = [f"--workdir={workdir}", f"--task=tsv:{reviews_tsv}", "--train_examples=200",
          "--eval_examples=60"]
  out = probe.main([*args, f"--output={tmp_path}"])
  assert out["layers"] == [0, 1, 2]
  for accuracy in out["scores"].values():
    assert len(accuracy) == 3 and max(accuracy) > out["majority"] + 0.1
  table = (tmp_path / "probe.md").read_text()
  assert table.count("\n| ") == 3 and "random weights" in table
  picture(tmp_path / "probe.png")
  with pytest.raises(UserError, match="layer 3 does not exist"):
    probe.main([*args, "--layers=0,3", f"--output={tmp_path / 'bad'}"])


def test_embeddings_find_a_text_nearest_to_itself(workdir, reviews_tsv, tmp_path):
  embeddings = script("embeddings")
  train = tasks.load_split(tasks.task_of(f"tsv:{reviews_tsv}"), "train")
  text = train.texts[7][0]
  out = embeddings.main([f"--workdir={workdir}", f"--task=tsv:{reviews_tsv}", "--split=train",
                         "--examples=600", f"--query={text}", "--neighbours=2",
                         f"--output={tmp_path}"])
  for way in ("mean over tokens", "[CLS]"):
    assert out["ways"][way].shape == (len(train), 128)
    nearest = out["neighbours"][way][text][0]
    assert nearest["text"] == text and nearest["similarity"] > 0.999
  picture(tmp_path / "embeddings.png")
  assert (tmp_path / "neighbours.json").is_file()


@pytest.mark.slow  # it trains two models: mostly compilation
def test_replaced_token_detection_learns(tmp_path):
  history = script("replaced_token_detection").main([
      "--steps=12", "--batch_size=16", "--max_seq_length=32", f"--output={tmp_path}"])
  assert len(history) == 12
  first, last = history[0], np.mean([h["rtd_loss"] for h in history[-3:]])
  assert last < 0.7 * first["rtd_loss"]
  assert np.mean([h["mlm_loss"] for h in history[-3:]]) < first["mlm_loss"] - 0.1
  assert 0.05 < first["replaced_share"] < 0.2
  picture(tmp_path / "losses.png")


@pytest.mark.slow  # three meshes, three compilations
def test_sharding_gives_one_loss_on_every_mesh():
  out = script("sharding").main(["--size=tiny", "--batch_size=8", "--max_seq_length=16",
                                 "--steps=1"])
  assert set(out) == {"data", "fsdp", "tensor"}
  losses = [r["loss"] for r in out.values()]
  assert max(losses) - min(losses) < 1e-4 and all(r["step_s"] > 0 for r in out.values())


@pytest.mark.parametrize("architecture", ["bert", "modernbert"])
def test_features_are_every_layers_pooled_hidden_states(architecture):
  """Trained.features of random encoders: the embeddings' and each layer's
  mean over a text's tokens and its [CLS] vector, whatever the batch."""
  section = config_sections.model()
  section.update(size="tiny", architecture=architecture)
  tokenizer = Tokenizer.load(builtin.TOKENIZER_FILE)
  config = architectures.from_section(section, vocab_size=tokenizer.vocab_size)
  run = trained.Trained(config, None, {}, tokenizer, 0, 16).with_random_encoder(3)
  texts = [("Emma smiled.",), ("He did not smile back at her, not once.",), ("No.",)]
  mean, first = run.features(texts, batch_size=2)
  assert mean.shape == first.shape == (config.num_layers + 1, 3, config.hidden_size)
  np.testing.assert_allclose(run.features(texts, batch_size=8)[0], mean, atol=1e-5)
  batch = tasks.encode(tasks.Examples(texts[1:2], None), tokenizer, 16).arrays
  encoder, params = run.encoder()
  _, internals = apply_with_internals(encoder, {"params": params},
                                      *(batch[k] for k in encoder.INPUTS))
  real = batch["input_mask"][0].astype(bool)
  hidden = np.asarray(internals.hidden_states)[:, 0]
  np.testing.assert_allclose(mean[:, 1], hidden[:, real].mean(1), atol=1e-5)
  np.testing.assert_allclose(first[:, 1], hidden[:, 0], atol=1e-5)


@pytest.mark.parametrize("name,args,message", [
    ("attention_maps", ["--workdir=/nonexistent", "--text=a", "--output=o"],
     "not an lmjax workdir"),
    ("layer_probe", ["--workdir=w", "--output=o", "--train_examples=1"], "at least 2"),
    ("embeddings", ["--workdir=w", "--output=o", "--query= "], "--query"),
    ("replaced_token_detection", ["--steps=0", "--output=o"], "at least 1"),
    ("sharding", ["--size=huge"], "invalid choice"),
    ("sharding", ["--batch_size=12"], "must split"),
])
def test_a_bad_argument_is_one_line_and_status_2(name, args, message, monkeypatch, capsys,
                                                 tmp_path):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "argv", [name, *args])
  with pytest.raises(SystemExit) as ended:
    scripts.run(script(name).main)
  assert ended.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err and "\n" not in err
  assert not any(tmp_path.iterdir())
