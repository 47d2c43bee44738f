"""Workdirs in a bucket: pretraining, its resume, a fine-tuning start from it
and predictions, with `gs://` workdirs on a local Cloud Storage emulator
(the same API gcsfs and tensorstore speak to Cloud Storage), equal to the
same runs on local paths."""

import contextlib
import json
import logging
import os
import random
import socket

import jax
import pytest
from etils import epath
from helpers import event_scalars, pretrain_config, review, review_corpus
from helpers import task_config as finetune_config

from lmjax import paths
from lmjax.runs import finetuning, prediction
from lmjax.runs.pretraining import train_and_evaluate
from lmjax.trainer import writer as writer_module
from lmjax.trainer.writer import MetricWriter, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("data_dirs")]
BUCKET = "lmjax-test"


@pytest.fixture(scope="module")
def bucket():
  """gs://BUCKET served by gcp-storage-emulator, in memory, for this module."""
  from gcp_storage_emulator.handlers import objects  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator.server import create_server  # pylint: disable=import-outside-toplevel
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    # Cloud Storage sends an object's generation with its bytes, and
    # tensorstore reads it there; the emulator leaves the header out.
    with contextlib.suppress(Exception):
      found = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = found["generation"]
    return download(request, response, storage, *args, **kwargs)

  objects.download = download_with_generation
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  server = create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  for name in ("gcp_storage_emulator", "gcsfs", "google.auth"):
    logging.getLogger(name).setLevel(logging.CRITICAL)
  names = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")
  saved = {k: os.environ.get(k) for k in names}
  for name in names:
    os.environ[name] = f"http://localhost:{port}"
  yield f"gs://{BUCKET}"
  server.stop()
  objects.download = download
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


def pretraining(corpus):
  p = pretrain_config.get_config()
  p.data.source, p.data.max_seq_length, p.data.max_predictions_per_seq = (
      f"text:{corpus}", 32, 5)
  p.train.update(batch_size=8, steps=8, warmup_steps=2, eval_batches=1, eval_every=4,
                 log_every=1, checkpoint_every=4)
  p.probe.source = ""  # the probe is the pretraining tests' to check
  return p


def lines(workdir) -> list[dict]:
  return read_metrics(workdir)


def without_rates(records: list[dict]) -> list[dict]:
  """The records without what depends on time (tokens/s, MFU)."""
  timed = ("tokens_per_s", "mfu", "steps_per_s", "seconds")
  return [{k: v for k, v in r.items() if not k.startswith(timed)} for r in records]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  return review_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", 30, 8, seed=1)


@pytest.fixture(scope="module")
def pretrained(bucket, corpus, tmp_path_factory):
  """(local workdir, bucket workdir) of the same pretraining run."""
  local = tmp_path_factory.mktemp("local") / "pretrain"
  train_and_evaluate(pretraining(corpus), local)
  remote = f"{bucket}/pretrain"
  p = pretraining(corpus)
  p.train.profile_steps = "2,3"
  train_and_evaluate(p, remote)
  return local, remote


def test_a_bucket_workdir_holds_what_a_local_one_does(pretrained):
  local, remote = pretrained
  remote_path = epath.Path(remote)
  assert (remote_path / "tokenizer.model").read_bytes() == (local / "tokenizer.model").read_bytes()
  saved = json.loads((remote_path / "config.json").read_text())
  assert saved["train"].pop("profile_steps") == "2,3"
  expected = json.loads((local / "config.json").read_text())
  expected["train"].pop("profile_steps")
  assert saved == expected
  assert without_rates(lines(remote)) == without_rates(lines(local))
  assert sorted(int(p.name) for p in (remote_path / "checkpoints").iterdir()
                if p.name.isdigit()) == [4, 8]
  assert json.loads((remote_path / "summary.json").read_text())["step"] == 8
  tags = event_scalars(remote_path / "tensorboard")
  assert tags["loss"] == set(range(1, 9)) and 8 in tags["eval_mlm_accuracy"]
  assert list((remote_path / "profile").glob("plugins/profile/*/*.xplane.pb"))


def test_a_bucket_run_resumes_exactly(pretrained, corpus):
  """The run as if killed after its checkpoint of step 4: step 8's checkpoint
  and the summary gone; rerun, it resumes at 4 and ends as before."""
  _, remote = pretrained
  remote_path = epath.Path(remote)
  (remote_path / "checkpoints" / "8").rmtree()
  (remote_path / "summary.json").unlink()
  before = lines(remote)
  summary = train_and_evaluate(pretraining(corpus), remote)
  after = lines(remote)
  assert summary["step"] == 8
  assert without_rates(after) == without_rates(before)
  assert [r["step"] for r in after].count(5) == 1


def test_fine_tuning_in_a_bucket_from_a_bucket(pretrained, reviews_tsv,
                                               tmp_path):
  """A fine-tuning run and its predictions, workdir and start in the bucket,
  equal the same on local paths; rerun, the finished run is read back."""
  local, remote = pretrained
  rng = random.Random(3)
  (tmp_path / "texts.txt").write_text("\n".join(review(rng, i % 2 == 0)
                                                for i in range(10)) + "\n")
  runs = {}
  for name, source, workdir in (("local", local, tmp_path / "ft"),
                                ("bucket", remote, f"{remote}-ft")):
    c = finetune_config(reviews_tsv, steps=4, eval_every=2, log_every=1)
    c.init.source = f"pretrain:{source}"
    summary = finetuning.finetune(c, workdir)
    c.mode, c.predict.input = "predict", str(tmp_path / "texts.txt")
    prediction.predict(c, workdir)
    runs[name] = summary, paths.resolve(workdir)
  (local_summary, local_dir), (bucket_summary, bucket_dir) = runs["local"], runs["bucket"]
  assert bucket_summary.pop("init") == f"pretraining run {remote} (step 8)"
  local_summary.pop("init")
  assert bucket_summary == local_summary
  assert without_rates(lines(bucket_dir)) == without_rates(lines(local_dir))
  rows = (bucket_dir / "predictions.jsonl").read_text()
  assert rows == (local_dir / "predictions.jsonl").read_text() and len(rows.splitlines()) == 10
  assert (bucket_dir / "best" / str(bucket_summary["best_step"])).is_dir()
  assert [p.name for p in (bucket_dir / "checkpoints").iterdir()] == ["4"]
  c = finetune_config(reviews_tsv, steps=4, eval_every=2, log_every=1)
  c.init.source = f"pretrain:{remote}"
  again = finetuning.finetune(c, bucket_dir)
  again.pop("init")
  assert again == bucket_summary


def test_the_best_checkpoint_lives_in_a_bucket(bucket):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from lmjax.trainer.checkpoints import BestCheckpoint  # pylint: disable=import-outside-toplevel
  directory = f"{bucket}/best-only/best"
  best = BestCheckpoint(directory, "eval_accuracy")
  for step, accuracy in ((0, 0.5), (2, 0.7), (4, 0.6)):
    best.offer(step, {"w": jnp.full((4,), float(step))}, {"eval_accuracy": accuracy})
  params = best.params({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
  best.close()
  assert best.step == 2 and params["w"].tolist() == [2.0] * 4
  reopened = BestCheckpoint(directory, "eval_accuracy")
  assert (reopened.step, reopened.scores) == (2, {"eval_accuracy": 0.7})
  reopened.close()


def uploaded_bytes(workdir: str, steps: int, monkeypatch, start: int = 0) -> int:
  """Bytes a run of `steps` logged steps (a checkpoint every 10) uploads."""
  sizes = []
  original = writer_module.paths.write_whole

  def counted(path, content):
    sizes.append(len(content))
    original(path, content)

  monkeypatch.setattr(writer_module.paths, "write_whole", counted)
  writer = MetricWriter(workdir, start)
  for step in range(start + 1, steps + 1):
    writer.write(step, {"loss": 1.0 / step, "learning_rate": 1e-4, "grad_norm": 0.5})
    if step % 10 == 0:
      writer.flush()
  writer.close()
  monkeypatch.setattr(writer_module.paths, "write_whole", original)
  return sum(sizes)


def test_a_bucket_gets_bytes_that_grow_with_the_run_not_its_square(bucket, monkeypatch):
  """The metrics and event files of 200 and 2,000 logged steps, saved
  every 10: ten times the steps, about ten times the bytes (uploading the
  files whole, a hundred times)."""
  short = uploaded_bytes(f"{bucket}/metrics-short", 200, monkeypatch)
  long = uploaded_bytes(f"{bucket}/metrics-long", 2000, monkeypatch)
  print(f"\nuploaded: 200 steps {short:,} bytes; 2,000 steps {long:,} bytes "
        f"({long / short:.1f}x)")
  assert 9 < long / short < 11
  history = [r["step"] for r in read_metrics(f"{bucket}/metrics-long")]
  assert history == list(range(1, 2001))


def test_a_resumed_bucket_run_reads_as_one_ordered_history(bucket, monkeypatch):
  """A run that logged to step 37 resumes from its checkpoint of step 20:
  the lines after 20 go, the resumed run's follow in order."""
  workdir = f"{bucket}/metrics-resumed"
  uploaded_bytes(workdir, 37, monkeypatch)
  uploaded_bytes(workdir, 45, monkeypatch, start=20)
  records = read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, 46))
  assert records[30]["loss"] == 1.0 / 31
  tags = event_scalars(epath.Path(workdir) / "tensorboard")
  assert set(range(1, 46)) <= tags["loss"]
