"""The transfer experiment: its plan (which runs, with which configs), the
runs and their table, a second run that reads instead of training, and bad
input before any work."""

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.transfer import experiment as transfer
from experiments.transfer import main as transfer_main
from experiments.transfer import results as transfer_output
from lmjax.data.tokenization import Tokenizer
from lmjax.errors import ConfigError, UserError

ROOT = Path(__file__).parents[1]
WORDS = ["the", "film", "plot", "cast", "story", "ending", "is", "feels", "rather",
         "quite", "and", "its", "score", "pacing", "scene", "light"]


def transfer_config():
  spec = importlib.util.spec_from_file_location("transfer_config",
                                                ROOT / "experiments" / "transfer" / "config.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
  saved = os.environ.get("LMJAX_CACHE")
  os.environ["LMJAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
  yield
  if saved is None:
    os.environ.pop("LMJAX_CACHE")
  else:
    os.environ["LMJAX_CACHE"] = saved


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
  """400 labelled snippets of a few sentences; a keyword decides the label."""
  rng = random.Random(0)
  rows = []
  for i in range(400):
    positive = rng.random() < 0.6
    sentences = [" ".join(rng.sample(WORDS, 6)) + "." for _ in range(2)]
    sentences.append(f"It is {'splendid' if positive else 'dreadful'} {i}.")
    rng.shuffle(sentences)
    rows.append(f"{' '.join(sentences)}\t{'pos' if positive else 'neg'}")
  path = tmp_path_factory.mktemp("task") / "reviews.tsv"
  path.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
  return path


def small(reviews, variants="mlm_cp,random", seeds=2):
  config = transfer_config()
  config.update(task=f"tsv:{reviews}", variants=variants, seeds=seeds)
  config.pretrain.data.update(tokenizer="learn:40", max_seq_length=32,
                              max_predictions_per_seq=5)
  config.pretrain.train.update(batch_size=16, steps=12, budget_minutes=None, warmup_steps=2,
                               eval_every=12, eval_batches=2, checkpoint_every=12,
                               log_every=6)
  config.pretrain.probe.update(train_examples=100, eval_examples=40)
  config.finetune.task.max_seq_length = 32
  config.finetune.train.update(batch_size=16, steps=16, eval_every=8, log_every=8)
  return config


def test_the_plan_has_a_pretraining_per_variant_and_a_fine_tuning_per_seed(reviews, tmp_path):
  plan = transfer.plan(small(reviews, transfer_config().variants, seeds=3), str(tmp_path))
  assert list(plan.pretraining) == ["mlm", "mlm_nsp", "mlm_cp", "mlm_nsp_cp"]
  weights = {n: (c.train.mlm_weight, c.train.nsp_weight, c.train.cp_weight)
             for n, c in plan.pretraining.items()}
  assert weights == {"mlm": (1, 0, 0), "mlm_nsp": (1, 1, 0), "mlm_cp": (1, 0, 0.1),
                     "mlm_nsp_cp": (1, 1, 0.1)}
  for config in plan.pretraining.values():
    assert config.data.source == f"task:tsv:{reviews}"  # the task's own text
    assert config.probe.source == f"tsv:{reviews}"
  assert len(plan.finetuning) == 15
  assert [s for (n, s) in plan.finetuning if n == "mlm"] == [0, 1, 2]
  assert plan.finetuning["mlm", 1].init.source == f"pretrain:{tmp_path / 'pretrain' / 'mlm'}"
  assert plan.finetuning["mlm", 1].seed == 1
  random_start = plan.finetuning["random", 2]
  assert random_start.init.source == "random"
  pretrain = plan.pretraining["mlm"]
  assert random_start.model.size == pretrain.model.size
  # The pretraining learns its tokenizer from the corpus; random weights take
  # that one, learned once while planning.
  assert pretrain.data.tokenizer == "learn:40"
  assert Tokenizer.load(random_start.task.tokenizer).vocab_size == 40
  assert not any(tmp_path.iterdir())  # planning writes nothing in the workdir


@pytest.fixture(scope="module")
def experiment(reviews, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("transfer") / "exp"
  lines = []
  return workdir, transfer.run(small(reviews), str(workdir), echo=lines.append), lines


@pytest.mark.slow
def test_the_experiment_writes_its_table_from_every_run(experiment):
  workdir, results, lines = experiment
  assert json.loads((workdir / "results.json").read_text()) == results
  assert (workdir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [v["variant"] for v in results["variants"]] == ["mlm_cp", "random"]
  assert results["metrics"][0] == "test_accuracy"
  for variant in results["variants"]:
    assert [r["seed"] for r in variant["runs"]] == [0, 1]
    for key in results["metrics"]:
      scores = [r[key] for r in variant["runs"]]
      assert variant["mean"][key] == pytest.approx(np.mean(scores), abs=1e-5)
      assert variant["std"][key] == pytest.approx(np.std(scores, ddof=1), abs=1e-5)
    for run in variant["runs"]:
      summary = json.loads((workdir / "finetune" / variant["variant"] / f"seed_{run['seed']}"
                            / "summary.json").read_text())
      assert run["test_accuracy"] == summary["test_accuracy"]
  pretrained, random_start = results["variants"]
  summary = json.loads((workdir / "pretrain" / "mlm_cp" / "summary.json").read_text())
  assert pretrained["pretraining"]["eval_mlm_accuracy"] == summary["eval_mlm_accuracy"]
  assert 0 <= pretrained["pretraining"]["eval_probe_accuracy"] <= 1
  assert "eval_cp_accuracy" in pretrained["pretraining"]
  assert "eval_nsp_accuracy" not in pretrained["pretraining"]  # mlm_cp learns no NSP
  assert random_start["pretraining"] is None
  learned = (workdir / "pretrain" / "mlm_cp" / "tokenizer.model").read_bytes()
  for seed in (0, 1):
    assert (workdir / "finetune" / "random" / f"seed_{seed}" / "tokenizer.model"
            ).read_bytes() == learned
  assert 0.3 < results["baselines"]["majority"]["test_accuracy"] < 0.8
  assert results["baselines"]["tfidf"]["test_accuracy"] > 0.9  # the keyword
  table = (workdir / "results.md").read_text()
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert rows[0].startswith("| variant | test accuracy | test f1 | validation accuracy |")
  assert [r.split(" | ")[0] for r in rows[1:]] == [
      "| mlm_cp", "| random weights", "| majority class", "| TF-IDF + linear model"]
  mean, std = pretrained["mean"]["test_accuracy"], pretrained["std"]["test_accuracy"]
  assert f"| mlm_cp | {mean:.4f} ± {std:.4f} |" in table
  assert sum("running in" in line for line in lines) == 5


@pytest.mark.slow
def test_a_second_run_reads_the_finished_runs(experiment, reviews):
  workdir, results, _ = experiment
  stamps = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if "results." not in p.name}
  lines = []
  assert transfer.run(small(reviews), str(workdir), echo=lines.append) == results
  assert len(lines) == 5 and all("finished earlier" in line for line in lines)
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*")
          if "results." not in p.name} == stamps
  changed = small(reviews)
  changed.finetune.train.learning_rate = 1e-3
  with pytest.raises(UserError, match="holds a run made with another config"):
    transfer.run(changed, str(workdir), echo=lines.append)


@pytest.mark.parametrize("field,value,message", [
    ("variants", "mlm,bert", "config.variants: unknown variant 'bert'"),
    ("variants", "mlm,mlm", "names a variant twice"),
    ("variants", " ", "config.variants is empty"),
    ("seeds", 0, "config.seeds must be at least 1"),
    ("cp_weight", -1.0, "config.cp_weight must be positive"),
    ("task", "", "config.task is empty"),
    ("task", "tsv:/no/such/task.tsv", "no such file"),
    ("pretrain.train.steps", 0, "config.train.steps"),
    ("pretrain.train.batch_size", 1, "CP needs negatives"),
    ("finetune.train.learning_rate", -1.0, "config.train.learning_rate"),
    ("pretrain.data.tokenizer", "learn:some", "learn:N takes a number of pieces"),
    ("pretrain.data.source", "austen", r"data.source is set by the experiment \(config.corpus"),
    ("pretrain.probe.source", "glue/sst2", r"probe.source is set by .* \(config.task"),
    ("finetune.task.source", "rt_polarity", r"task.source is set by .* \(config.task"),
    ("finetune.init.source", "random", r"init.source is set by .* \(config.variants"),
    ("finetune.task.tokenizer", "t.model", r"tokenizer is set by .* \(the pretraining's"),
])
def test_bad_input_is_one_error_before_any_work(reviews, tmp_path, field, value, message):
  config = small(reviews)
  *sections, name = field.split(".")
  section = config
  for part in sections:
    section = section[part]
  section[name] = value
  with pytest.raises((ConfigError, UserError), match=message):
    transfer.run(config, str(tmp_path / "exp"))
  assert not (tmp_path / "exp").exists()


def test_the_entry_point_exits_2_with_one_line(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "experiments.transfer.main",
       "--config=experiments/transfer/config.py", f"--workdir={tmp_path / 'exp'}",
       "--config.variants=mlm,bert"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 2
  assert done.stderr.strip() == ("error: config.variants: unknown variant 'bert' (use some of "
                                 + ", ".join(transfer.VARIANTS) + ")")
  assert not (tmp_path / "exp").exists()


def test_the_table_of_a_task_without_a_test_split_scores_validation():
  summary = dict(main_metric="accuracy", best_step=4, eval_accuracy=0.8, eval_f1=0.7,
                 eval_loss=0.5, eval_majority_accuracy=0.6, eval_tfidf_accuracy=0.75)
  config = transfer_config()
  results = transfer_output.results(config, ["random"], {},
                                    {("random", 0): summary, ("random", 1): summary})
  assert results["metrics"] == ["eval_accuracy", "eval_f1"]
  assert results["split"] == "validation"
  assert results["baselines"] == {"majority": {"eval_accuracy": 0.6},
                                  "tfidf": {"eval_accuracy": 0.75}}
  assert "| random weights | 0.8000 ± 0.0000 | 0.7000 ± 0.0000 |" in \
      transfer_output.markdown(results)


def test_a_run_with_a_damaged_config_is_one_line(reviews, tmp_path):
  run = tmp_path / "exp" / "finetune" / "random" / "seed_0"
  run.mkdir(parents=True)
  (run / "summary.json").write_text('{"step": 16}')
  (run / "config.json").write_text('{"seed": ')
  with pytest.raises(UserError, match="config.json cannot be read"):
    transfer.run(small(reviews, variants="random", seeds=1), str(tmp_path / "exp"))
  assert (run / "config.json").read_text() == '{"seed": '


def test_a_stopped_run_stops_the_experiment_and_says_how_to_continue(reviews, tmp_path,
                                                                     monkeypatch):
  calls = []

  def stopped(config, workdir):  # a run that a SIGTERM stopped at its step 3
    calls.append(workdir)
    return {"step": 3, "stopped_by": "SIGTERM"}

  monkeypatch.setattr(transfer.finetuning, "finetune", stopped)
  results = transfer.run(small(reviews, variants="random", seeds=2), str(tmp_path / "exp"),
                         echo=lambda _: None)
  assert results == {"stopped_by": "SIGTERM",
                     "stopped_in": "[1/2] fine-tuning random, seed 0"}
  assert len(calls) == 1  # the next run does not start
  assert not (tmp_path / "exp" / "results.json").exists()
  assert transfer_main.report(results, 1.0) == (
      "[1/2] fine-tuning random, seed 0 stopped (SIGTERM); run the same command again "
      "to continue")


def test_a_modernbert_variant_is_the_same_recipe_on_modernbert(reviews, tmp_path):
  plan = transfer.plan(small(reviews, "mlm,modernbert_mlm,modernbert_random", seeds=1),
                       str(tmp_path))
  assert list(plan.pretraining) == ["mlm", "modernbert_mlm"]
  bert, modern = plan.pretraining["mlm"], plan.pretraining["modernbert_mlm"]
  assert (bert.model.architecture, modern.model.architecture) == ("bert", "modernbert")
  assert (modern.train.mlm_weight, modern.train.nsp_weight, modern.train.cp_weight) == (1, 0, 0)
  modern.model.architecture = "bert"
  assert modern.to_dict() == bert.to_dict()  # nothing else differs
  fine = plan.finetuning["modernbert_mlm", 0]
  assert fine.model.architecture == "modernbert"
  assert fine.init.source == f"pretrain:{tmp_path / 'pretrain' / 'modernbert_mlm'}"
  random_start = plan.finetuning["modernbert_random", 0]
  assert (random_start.init.source, random_start.model.architecture) == ("random", "modernbert")
  assert Tokenizer.load(random_start.task.tokenizer).vocab_size == 40
  table = transfer_output.markdown(dict(
      corpus="c", task="t", seeds=1, metrics=["test_accuracy"], baselines={},
      variants=[dict(variant=v, pretraining=None, mean={"test_accuracy": 0.5},
                     std={"test_accuracy": 0.0}) for v in ("random", "modernbert_random")]))
  assert "| random weights |" in table and "| modernbert random weights |" in table
