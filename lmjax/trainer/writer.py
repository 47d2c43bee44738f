"""Metric writers: one JSON object per logged step in `DIR/metrics.jsonl`,
and the same scalars as TensorBoard event files in `DIR/tensorboard`.

A local workdir's metrics.jsonl grows a line at a time. A bucket's objects
cannot be appended to, so there the writer holds the file's lines and
uploads it whole at each `flush`, which the loop calls when it saves a
checkpoint and when it ends: what a resumed run keeps is always there.
TensorBoard's event files reach a bucket the same way, through `lmjax.paths`.
"""

import io
import json
import math
import os

from lmjax import paths
from lmjax.errors import Fault


class MetricWriter:
  """Appends the scalars of a step to both; a disabled writer (a process
  other than 0) writes nothing. Lines of steps after `start` (logged by a
  run that stopped after its last checkpoint) are dropped: the resumed run
  logs them again."""

  def __init__(self, workdir: paths.PathLike, start: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = paths.resolve(workdir) / "metrics.jsonl"
    self._remote = paths.is_remote(self.path)
    self._lines: list[str] = []  # of a remote file, uploaded at flush
    self._dirty = False
    self._tb = None
    self._tb_directory = os.fspath(paths.resolve(workdir) / "tensorboard")
    if not enabled:
      return
    try:
      if self.path.exists():
        self._lines = [line for line in self.path.read_text().splitlines()
                       if line.strip() and json.loads(line)["step"] <= start]
        paths.write_whole(self.path, "".join(line + "\n" for line in self._lines))
    except OSError as e:
      raise Fault(f"{self.path}: cannot rewrite the run's metrics ({e.strerror or e})") from None
    if not self._remote:
      self._lines = []

  @staticmethod
  def check(workdir: paths.PathLike) -> None:
    """Fault when DIR/metrics.jsonl exists but cannot be rewritten (a
    directory in its place, a read-only file): before the run adds anything."""
    path = paths.resolve(workdir) / "metrics.jsonl"
    if paths.is_remote(path) or not path.exists():
      return
    if path.is_dir() or not os.access(path, os.W_OK):
      raise Fault(f"{path}: cannot rewrite the run's metrics (a directory, or not writable)")

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: _plain(v) for k, v in scalars.items()}}
    line = json.dumps(record)
    if self._remote:
      self._lines.append(line)
      self._dirty = True
    else:
      try:
        with open(self.path, "a") as f:
          f.write(line + "\n")
      except OSError as e:
        raise Fault(f"{self.path}: cannot write the run's metrics ({e.strerror or e})") from None
    if self._tb is None:  # made at the first line: a run that fails before adds none
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      _register_bucket_files()
      self._tb = SummaryWriter(self._tb_directory)
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, step)

  def flush(self) -> None:
    if self._dirty:
      paths.write_whole(self.path, "".join(line + "\n" for line in self._lines))
      self._dirty = False
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()


def _plain(value):
  value = value.item() if hasattr(value, "item") else value
  return float(value) if isinstance(value, float) else value


class _WholeObject:
  """An event file in a bucket: the records so far, uploaded whole at each
  flush (tensorboardX flushes every two minutes and at close)."""

  def __init__(self, path: str):
    self._path, self._buffer = path, io.BytesIO()

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    paths.write_whole(self._path, self._buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _BucketFiles:
  """tensorboardX's writer factory for a URI scheme, through lmjax.paths."""

  def open(self, path: str) -> _WholeObject:
    return _WholeObject(path)

  def directory_check(self, path: str) -> None:
    paths.resolve(path).mkdir(parents=True, exist_ok=True)


def _register_bucket_files() -> None:
  """tensorboardX writes gs:// and s3:// event files through lmjax.paths
  (tensorboardX is imported on first use: it takes a second)."""
  from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel
  for scheme in ("gs", "s3"):
    record_writer.register_writer_factory(scheme, _BucketFiles())
