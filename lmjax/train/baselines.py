"""Baselines a fine-tuned model is scored next to, on the host: a bag of
words (TF-IDF of words and word pairs) with a linear model, trained on the
same training split. Plain scikit-learn; no JAX."""

import numpy as np
import sklearn.feature_extraction.text
import sklearn.linear_model
import sklearn.pipeline
import sklearn.preprocessing

from lmjax.train.task_metrics import task_metrics


def _joined(texts: list[tuple[str, ...]]) -> list[str]:
  return [" \n ".join(t) for t in texts]  # a pair's two texts make one bag


def tfidf(metrics: tuple[str, ...], num_labels: int, train_texts, train_labels: np.ndarray,
          splits: dict[str, tuple[list, np.ndarray]]) -> dict[str, float]:
  """`{prefix}_tfidf_{metric}` for each `prefix: (texts, labels)` of
  `splits`: TF-IDF (words and word pairs, sublinear term frequency) then
  logistic regression for classes, ridge regression for a score
  (`num_labels` 1)."""
  vectorizer = sklearn.feature_extraction.text.TfidfVectorizer(ngram_range=(1, 2),
                                                               sublinear_tf=True)
  features = vectorizer.fit_transform(_joined(train_texts))
  if num_labels == 1:
    model = sklearn.linear_model.Ridge(alpha=1.0).fit(features, train_labels)
  else:
    model = sklearn.linear_model.LogisticRegression(max_iter=2000).fit(features, train_labels)
  scores = {}
  for prefix, (texts, labels) in splits.items():
    inputs = vectorizer.transform(_joined(texts))
    if num_labels == 1:
      outputs = model.predict(inputs)[:, None]
    else:  # probabilities over every class, also those the training split lacks
      outputs = np.zeros((len(texts), num_labels))
      outputs[:, model.classes_] = model.predict_proba(inputs)
    scores.update({f"{prefix}_tfidf_{k}": v
                   for k, v in task_metrics(metrics, outputs, labels).items()})
  return scores


def linear_probe(train_features: np.ndarray, train_labels: np.ndarray,
                 eval_features: np.ndarray, eval_labels: np.ndarray) -> float:
  """Accuracy of a logistic regression on standardized frozen features."""
  model = sklearn.pipeline.make_pipeline(
      sklearn.preprocessing.StandardScaler(),
      sklearn.linear_model.LogisticRegression(max_iter=2000))
  model.fit(train_features, train_labels)
  return float(model.score(eval_features, eval_labels))
