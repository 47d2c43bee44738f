"""The path layer on local paths: resolution, whole writes, workdir checks,
and the metric writer's resume truncation (bucket runs: bucket_test.py)."""

import json
import os

import pytest

from lmjax import paths
from lmjax.errors import UserError
from lmjax.trainer.writer import MetricWriter


def test_local_paths_resolve_absolute_and_uris_stay_as_they_are(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert os.fspath(paths.resolve("runs/a")) == str(tmp_path / "runs" / "a")
  assert os.fspath(paths.resolve("~/b")) == str(tmp_path / "home" / "b")
  assert os.fspath(paths.resolve("gs://bucket/run")) == "gs://bucket/run"
  assert paths.is_remote("gs://bucket/run") and not paths.is_remote(tmp_path)


def test_a_whole_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
  target = tmp_path / "summary.json"
  target.write_text("old")
  paths.write_whole(target, "new\n")
  paths.write_whole(tmp_path / "blob", b"\x00\x01")
  assert target.read_text() == "new\n" and (tmp_path / "blob").read_bytes() == b"\x00\x01"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "summary.json"]


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(UserError, match="is a file, not a directory"):
    paths.check_workdir(tmp_path / "f")
  assert paths.check_workdir(tmp_path / "new").name == "new"
  assert not (tmp_path / "new").exists()


def test_the_metric_writer_drops_lines_after_the_resumed_step(tmp_path):
  writer = MetricWriter(tmp_path)
  for step in range(1, 7):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  resumed = MetricWriter(tmp_path, start=4)
  resumed.write(5, {"loss": 0.5})
  resumed.close()
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["loss"]) for r in lines] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25),
                                                     (5, 0.5)]
  assert not MetricWriter(tmp_path / "other", enabled=False).path.parent.exists()


def test_bucket_event_chunks_of_a_writer_opened_in_the_same_second_follow_the_first(
    tmp_path):
  """tensorboardX names an event file by the second it opens: a resumed
  run's writer may get the same name, and its chunks must not overwrite."""
  from lmjax.trainer.writer import _Chunks  # pylint: disable=import-outside-toplevel
  name = str(tmp_path / "events.out.tfevents.1700000000.host")
  for records in ([b"a", b"b"], [b"c"]):
    chunks = _Chunks(name)
    for record in records:
      chunks.write(record)
      chunks.flush()
    chunks.close()
  files = sorted(tmp_path.iterdir())
  assert [f.name.rsplit(".", 1)[1] for f in files] == ["00000", "00001", "00002"]
  assert b"".join(f.read_bytes() for f in files) == b"abc"


def test_a_directory_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
  paths.check_writable(tmp_path / "new" / "run")  # made inside tmp_path: fine
  monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only mount
  with pytest.raises(UserError, match="cannot write there"):
    paths.check_writable(tmp_path / "new" / "run")
  assert not (tmp_path / "new").exists()
