"""Metric writers: one JSON object per logged step in `DIR/metrics.jsonl`,
and the same scalars as TensorBoard event files in `DIR/tensorboard`.

A local workdir's metrics.jsonl grows a line at a time. A bucket's objects
cannot be appended to, and uploading a growing file whole at each flush
would upload bytes that grow with the square of the run. There the lines
go in numbered segments, `DIR/metrics/000000.jsonl`, one new object at each
`flush` (which the loop calls when it saves a checkpoint and when it ends)
holding the lines since the last: what a resumed run keeps is always
there, and `read_metrics` reads either layout as one ordered history.
TensorBoard's event files reach a bucket the same way: each flush uploads
the records since the last as a file of its own beside the first.
"""

import io
import json
import math
import os

from lmjax import paths
from lmjax.errors import Fault

SEGMENTS = "metrics"  # a bucket workdir's directory of metrics segments


def read_metrics(workdir: paths.PathLike) -> list[dict]:
  """Every logged line of a run, in order: DIR/metrics.jsonl, or the
  segments of a bucket's DIR/metrics/."""
  return [json.loads(line) for _, text in _metric_files(paths.resolve(workdir))
          for line in text.splitlines() if line.strip()]


def _metric_files(workdir) -> list[tuple[object, str]]:
  """(path, text) of the files that hold a run's metrics, in order."""
  single = workdir / "metrics.jsonl"
  if single.exists():
    return [(single, single.read_text())]
  directory = workdir / SEGMENTS
  if not directory.exists():
    return []
  return [(p, p.read_text()) for p in sorted(directory.glob("*.jsonl"))]


class MetricWriter:
  """Appends the scalars of a step to both; a disabled writer (a process
  other than 0) writes nothing. Lines of steps after `start` (logged by a
  run that stopped after its last checkpoint) are dropped: the resumed run
  logs them again."""

  def __init__(self, workdir: paths.PathLike, start: int = 0, enabled: bool = True):
    self.enabled = enabled
    workdir = paths.resolve(workdir)
    self._remote = paths.is_remote(workdir)
    self.path = workdir / (SEGMENTS if self._remote else "metrics.jsonl")
    self._pending: list[str] = []  # a bucket's lines since the last flush
    self._next_segment: int | None = None  # the number of its next segment
    self._tb = None
    self._tb_directory = os.fspath(workdir / "tensorboard")
    if enabled:
      self._drop_after(workdir, start)

  def _drop_after(self, workdir, start: int) -> None:
    """Rewrites the files whose lines go past `start`; deletes segments
    that begin after it."""
    try:
      for path, text in _metric_files(workdir):
        lines = [line for line in text.splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= start]
        if not kept and path.parent.name == SEGMENTS:
          path.unlink()
        elif len(kept) < len(lines):
          paths.write_whole(path, "".join(line + "\n" for line in kept))
    except OSError as e:
      raise Fault(f"{workdir / 'metrics.jsonl'}: cannot rewrite the run's metrics "
                  f"({e.strerror or e})") from None

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
      self._pending.append(line)
    else:
      try:
        with open(self.path, "a") as f:
          f.write(line + "\n")
      except OSError as e:
        raise Fault(f"{self.path}: cannot write the run's metrics ({e.strerror or e})") from None
    if self._tb is None:  # made at the first line: a run that fails before adds none
      _import_tensorboardx()
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      _register_bucket_files()
      self._tb = SummaryWriter(self._tb_directory)
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, step)

  def flush(self) -> None:
    if self._pending:
      if self._next_segment is None:
        names = [p.stem for p in self.path.glob("*.jsonl")] if self.path.exists() else []
        self._next_segment = 1 + max((int(n) for n in names if n.isdigit()), default=-1)
      paths.write_whole(self.path / f"{self._next_segment:06d}.jsonl",
                        "".join(line + "\n" for line in self._pending))
      self._pending, self._next_segment = [], self._next_segment + 1
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()


def _plain(value):
  value = value.item() if hasattr(value, "item") else value
  return float(value) if isinstance(value, float) else value


class _Chunks:
  """An event file in a bucket: each flush uploads the records written
  since the last as an object of its own, `<name>.<n>` (TensorBoard reads
  every events file of a directory in the order of their names; tensorboardX
  flushes every two minutes and at close)."""

  def __init__(self, path: str):
    self._path, self._buffer = path, io.BytesIO()
    # A writer opened in the same second as an earlier one (a quick resume)
    # gets the same name from tensorboardX: its chunks follow that one's.
    base = paths.resolve(path)
    self._count = len(list(base.parent.glob(base.name + ".*"))) if base.parent.exists() else 0

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    data = self._buffer.getvalue()
    if data:
      paths.write_whole(f"{self._path}.{self._count:05d}", data)
      self._buffer, self._count = io.BytesIO(), self._count + 1

  def close(self) -> None:
    self.flush()


class _BucketFiles:
  """tensorboardX's writer factory for a URI scheme, through lmjax.paths."""

  def open(self, path: str) -> _Chunks:
    return _Chunks(path)

  def directory_check(self, path: str) -> None:
    paths.resolve(path).mkdir(parents=True, exist_ok=True)


def _import_tensorboardx() -> None:
  """Imports tensorboardX without torch. Where torch is installed,
  tensorboardX imports it (1.5 to 3 s at a run's first logged step) only to
  accept its tensors; lmjax logs floats. Unless torch is loaded already,
  tensorboardX is imported as on a machine without it."""
  import sys  # pylint: disable=import-outside-toplevel
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    return
  sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
  try:
    import tensorboardX  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import
  finally:
    del sys.modules["torch"]


def _register_bucket_files() -> None:
  """tensorboardX writes gs:// and s3:// event files through lmjax.paths
  (tensorboardX is imported on first use: it takes a second)."""
  from tensorboardX import record_writer  # pylint: disable=import-outside-toplevel
  for scheme in ("gs", "s3"):
    record_writer.register_writer_factory(scheme, _BucketFiles())
