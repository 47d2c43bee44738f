"""The metrics of fine-tuning tasks, from scikit-learn and scipy, computed
on the host from a model's outputs."""

import numpy as np
import scipy.stats
import sklearn.metrics


def _correlation(fn):
  def metric(y_true, y_pred):
    if np.std(y_true) == 0 or np.std(y_pred) == 0:
      return 0.0  # undefined for a constant; scored as no correlation
    return float(fn(y_true, y_pred).statistic)
  return metric


# name -> (y_true, y_pred) -> float, higher is better. Classifiers pass class
# indices, regressors scores.
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
