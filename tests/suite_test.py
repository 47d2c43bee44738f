"""The task suite: its plan (names, order, each run's config), a small suite
end to end with its tables and a resume, and bad input before any work."""

import importlib.util
import json
import random
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import linen as nn

from experiments import local_tasks
from helpers import BAD, FILLER, GOOD, ROOT
from lmjax.data import builtin, tasks
from lmjax.errors import ConfigError, UserError
from lmjax.interop.hf import save_hf_bert
from lmjax.model import BertConfig, BertForPreTraining
from lmjax.runs import suite, suite_results

pytestmark = pytest.mark.usefixtures("data_dirs")


def suite_config(**fields):
  spec = importlib.util.spec_from_file_location("suite_config", ROOT / "configs" / "suite.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.update(fields)
  config.finetune.task.max_seq_length = 24
  config.finetune.train.update(batch_size=16, steps=20, learning_rate=2e-3, log_every=10,
                               eval_every=20)
  return config


def keyword_task(path, count, labels, seed=0):
  """`count` snippets whose label a keyword decides (label i: word i)."""
  rng = random.Random(seed)
  words = GOOD[:len(labels)] if len(labels) == 2 else (GOOD + BAD)[:len(labels)]
  rows = []
  for i in range(count):
    k = rng.randrange(len(labels))
    text = rng.sample(FILLER, 5) + [words[k]]
    rng.shuffle(text)
    rows.append(f"{' '.join(text)} {i}\t{labels[k]}")
  path.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
  return path


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tasks")
  return (keyword_task(directory / "big.tsv", 500, ["neg", "pos"]),
          keyword_task(directory / "small.tsv", 300, ["a", "b", "c"], seed=1))


@pytest.fixture(scope="module")
def hf_encoder(tmp_path_factory):
  """A Hugging Face BERT directory of random tiny weights with the
  built-in tokenizer."""
  cfg = BertConfig.named("tiny", vocab_size=8000, scan_layers=False)
  ids = np.ones((1, 8), np.int32)
  params = nn.unbox(BertForPreTraining(cfg).init(jax.random.key(3), ids, ids, ids,
                                                 ids[:, :2]))["params"]
  directory = tmp_path_factory.mktemp("hf") / "tiny-bert"
  save_hf_bert(cfg, params, directory, {"tokenizer.model": builtin.TOKENIZER_FILE.read_bytes()})
  return directory


def test_names_and_order_soonest_first(task_files):
  big, small = task_files
  plan = suite.plan(suite_config(tasks=f"tsv:{big},tsv:{small}", starts="random", seeds=2),
                    echo=lambda _: None)
  assert list(plan.tasks) == ["small", "big"]  # fewer training characters first
  assert list(plan.runs) == [("small", "random", 0), ("small", "random", 1),
                             ("big", "random", 0), ("big", "random", 1)]
  run = plan.runs["big", "random", 1]
  assert (run.task.source, run.init.source, run.seed) == (f"tsv:{big}", "random", 1)
  assert suite.task_name("glue/sst2") == "glue_sst2"
  assert suite.start_name("pretrain:runs/pretrain") == "pretrain_pretrain"


@pytest.mark.parametrize("fields,error,message", [
    ({"tasks": "sst"}, ConfigError, "config.tasks.source 'sst' is not rt_polarity, glue/NAME"),
    ({"tasks": "glue/sst3"}, ConfigError, "unknown GLUE task 'sst3'"),
    ({"tasks": "tsv:{big},tsv:{big}"}, ConfigError, "config.tasks names 'tsv:"),
    ({"tasks": "tsv:{big},tsv:{small}/./big.tsv"}, ConfigError, "config.tasks names 'big' as"),
    ({"tasks": " , "}, ConfigError, "config.tasks is empty"),
    ({"tasks": "tsv:/no/such/task.tsv"}, UserError, "/no/such/task.tsv"),
    ({"starts": "random,random"}, ConfigError, "config.starts names 'random' twice"),
    ({"starts": "checkpoint:x"}, ConfigError, "config.init.source must be pretrain:DIR"),
    ({"starts": "pretrain:/no/such/run"}, UserError, "is not a pretraining workdir"),
    ({"seeds": 0}, ConfigError, "config.seeds must be at least 1, got 0"),
    ({"finetune.task.source": "rt_polarity"}, ConfigError,
     "config.finetune.task.source is set by the suite (config.tasks)"),
    ({"finetune.train.learning_rate": 0.0}, ConfigError,
     "config.train.learning_rate must be positive"),
])
def test_bad_input_fails_before_any_work(task_files, tmp_path, fields, error, message):
  big, small = task_files
  config = suite_config(tasks=f"tsv:{big}", starts="random")
  for key, value in fields.items():
    value = value.format(big=big, small=small.parent) if isinstance(value, str) else value
    *sections, name = key.split(".")
    target = config
    for section in sections:
      target = target[section]
    target[name] = value
  with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
    suite.run(config, str(tmp_path / "w"), echo=lambda _: None)
  assert not (tmp_path / "w").exists()


def test_the_entry_point_exits_2_with_one_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "lmjax.suite", f"--config={ROOT}/configs/suite.py",
                         f"--workdir={tmp_path / 'w'}", "--config.tasks=rt_polarity,rt_polarity"],
                        capture_output=True, text=True, cwd=ROOT, check=False)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip() == ("error: config.tasks names 'rt_polarity' twice; a suite runs "
                                 "each once")
  assert not (tmp_path / "w").exists()


def test_results_are_each_tasks_median_and_the_average_of_the_medians():
  plan = suite.Plan({"a": "tsv:a.tsv", "b": "tsv:b.tsv"}, {"x": "random", "y": "hf:y"},
                    {(t, s, seed): None for t in "ab" for s in "xy" for seed in (0, 1, 2)})
  rng = np.random.default_rng(0)
  done = {key: {"main_metric": "f1", "test_f1": float(rng.random()), "best_step": 4,
                "test_majority_f1": 0.25, "test_tfidf_f1": 0.5, "train_examples": 10}
          for key in plan.runs}
  results = suite_results.results(suite_config(seeds=3), plan, done)
  for row in results["tasks"]:
    assert (row["metric"], row["split"], row["baselines"]) == (
        "f1", "test", {"majority": 0.25, "tfidf": 0.5})
    for start in "xy":
      scores = [done[row["task"], start, seed]["test_f1"] for seed in (0, 1, 2)]
      figures = row["starts"][start]
      assert figures["median"] == pytest.approx(np.median(scores), abs=1e-5)
      assert (figures["low"], figures["high"]) == pytest.approx((min(scores), max(scores)),
                                                                abs=1e-5)
  for start in "xy":
    assert results["average"][start] == pytest.approx(np.mean(
        [r["starts"][start]["median"] for r in results["tasks"]]), abs=1e-5)
  del done["b", "y", 2]  # a task with a run missing is left out until it is done
  partial = suite_results.results(suite_config(seeds=3), plan, done)
  assert [r["task"] for r in partial["tasks"]] == ["a"] and not partial["complete"]
  table = suite_results.markdown(results)
  assert "## a (test f1, 10 training examples)" in table and "## Average over tasks" in table


@pytest.mark.slow
def test_a_suite_writes_its_tables_and_resumes_where_it_stopped(task_files, hf_encoder,
                                                                 tmp_path):
  big, small = task_files
  config = suite_config(tasks=f"tsv:{big},tsv:{small}", starts=f"hf:{hf_encoder},random",
                        seeds=1)
  workdir = tmp_path / "suite"
  lines = []
  results = suite.run(config, str(workdir), echo=lines.append)
  assert [line.split(":")[0] for line in lines if line.startswith("[")] == [
      "[1/4] small, hf_tiny-bert, seed 0", "[2/4] small, random, seed 0",
      "[3/4] big, hf_tiny-bert, seed 0", "[4/4] big, random, seed 0"]
  assert [r["task"] for r in results["tasks"]] == ["small", "big"] and results["complete"]
  for row in results["tasks"]:
    assert row["metric"] == "accuracy" and row["split"] == "test"
    for start in ("hf_tiny-bert", "random"):
      summary = json.loads((workdir / row["task"] / start / "seed_0" / "summary.json")
                           .read_text())
      assert row["starts"][start]["median"] == pytest.approx(summary["test_accuracy"])
    # A keyword decides the label: some start learns it beyond the majority class.
    assert max(f["median"] for f in row["starts"].values()) > row["baselines"]["majority"] + 0.1
  assert json.loads((workdir / "results.json").read_text()) == results
  table = (workdir / "results.md").read_text()
  assert "## small (test accuracy, " in table and "| random | " in table
  assert (workdir / "results.png").read_bytes()[:4] == b"\x89PNG"

  # A run that did not finish (no summary) runs again; the others are read.
  (workdir / "small" / "random" / "seed_0" / "summary.json").unlink()
  lines.clear()
  again = suite.run(config, str(workdir), echo=lines.append)
  ran = [line for line in lines if "running in" in line]
  assert len(ran) == 1 and ran[0].startswith("[2/4] small, random, seed 0")
  assert sum("finished earlier" in line for line in lines) == 3
  assert again == results


def test_the_local_tasks_are_the_same_files_every_time_and_load_as_tasks(tmp_path, capsys):
  local_tasks.main([f"--output={tmp_path / 'a'}"])
  local_tasks.main([f"--output={tmp_path / 'b'}"])
  assert "novels.tsv: 4000 examples, 6 labels" in capsys.readouterr().out
  sizes = {"novels": (4000, 6), "speech": (3000, 2), "questions": (2000, 2)}
  for name, (count, classes) in sizes.items():
    first = (tmp_path / "a" / f"{name}.tsv").read_bytes()
    assert first == (tmp_path / "b" / f"{name}.tsv").read_bytes()
    task = tasks.task_of(f"tsv:{tmp_path / 'a' / name}.tsv")
    splits = [tasks.load_split(task, split) for split in ("train", "validation", "test")]
    assert sum(len(s) for s in splits) == count and len(task.labels) == classes
    assert len(splits[1]) > 0.05 * count and len(splits[2]) > 0.05 * count
  spoken = [line for line in (tmp_path / "a" / "speech.tsv").read_text().splitlines()
            if line.endswith("\tspoken")]
  assert spoken and not any('"' in line for line in spoken)  # the quotation marks are gone
  with pytest.raises(UserError, match="is a file"):
    local_tasks.main([f"--output={tmp_path / 'a' / 'novels.tsv'}"])
