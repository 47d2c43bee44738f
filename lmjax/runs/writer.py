"""Metric writers: one JSON object per logged step in `DIR/metrics.jsonl`,
and the same scalars as TensorBoard event files in `DIR/tensorboard`."""

import json
import math
import os
from pathlib import Path


class MetricWriter:
  """Appends the scalars of a step to both; a disabled writer (a process
  other than 0) writes nothing."""

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
    self.path = Path(workdir) / "metrics.jsonl"
    self.enabled = enabled
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.fspath(Path(workdir) / "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops lines of steps after `step`: a resumed run logs them again."""
    if not (self.enabled and self.path.exists()):
      return
    kept = [line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: _plain(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _plain(value):
  value = value.item() if hasattr(value, "item") else value
  return float(value) if isinstance(value, float) else value
