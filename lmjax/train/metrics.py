"""Metric writers (JSONL and TensorBoard), FLOPs / MFU accounting, and the
metrics of fine-tuning tasks."""

import json
import math
import os
from pathlib import Path

import jax
import numpy as np
import scipy.stats
import sklearn.metrics

# Dense bf16 peak FLOP/s per chip, from the vendors' datasheets.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12, "NVIDIA B200": 2250e12,
}


def peak_flops_per_device(cpu_peak_tflops: float) -> float | None:
  """Peak FLOP/s of one local device: a known accelerator's, or on CPU the
  configured figure for the whole host shared among its devices."""
  device = jax.local_devices()[0]
  if device.platform == "cpu":
    return cpu_peak_tflops * 1e12 / jax.local_device_count() if cpu_peak_tflops else None
  for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if device.device_kind.startswith(name):
      return flops
  return None


class MetricWriter:
  """Appends one JSON object per logged step to `DIR/metrics.jsonl` and the
  same scalars to TensorBoard event files in `DIR/tensorboard`."""

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


def _correlation(fn):
  def metric(y_true, y_pred):
    if np.std(y_true) == 0 or np.std(y_pred) == 0:
      return 0.0  # undefined for a constant; scored as no correlation
    return float(fn(y_true, y_pred).statistic)
  return metric


# Task metrics from scikit-learn and scipy: name -> (y_true, y_pred) -> float,
# higher is better. Classifiers pass class indices, regressors scores.
METRICS = {
    "accuracy": lambda t, p: float(sklearn.metrics.accuracy_score(t, p)),
    "f1": lambda t, p: float(sklearn.metrics.f1_score(t, p, zero_division=0.0)),
    "f1_macro": lambda t, p: float(sklearn.metrics.f1_score(t, p, average="macro",
                                                             zero_division=0.0)),
    "matthews_corr": lambda t, p: float(sklearn.metrics.matthews_corrcoef(t, p)),
    "pearson": _correlation(scipy.stats.pearsonr),
    "spearman": _correlation(scipy.stats.spearmanr),
}
REGRESSION_METRICS = ("pearson", "spearman")


def task_metrics(names, logits_NxK: np.ndarray, labels_N: np.ndarray) -> dict[str, float]:
  """The named metrics of predictions: the argmax class of K > 1 logits, or
  the single output of a regressor, against the labels."""
  predictions = logits_NxK[:, 0] if logits_NxK.shape[1] == 1 else logits_NxK.argmax(1)
  return {name: METRICS[name](labels_N, predictions) for name in names}
