"""The TF-IDF baseline of fine-tuning summaries: classes, scores and pairs."""

import random

import numpy as np
import pytest
import sklearn.feature_extraction.text
import sklearn.linear_model

from lmjax.train import baselines

WORDS = ["the", "film", "plot", "actor", "scene", "story", "music", "light", "long", "short",
         "old", "new"]


def _texts(rng, count, keyword_of):
  texts, labels = [], []
  for _ in range(count):
    label = rng.randrange(3)
    words = rng.sample(WORDS, 5) + [keyword_of[label]]
    rng.shuffle(words)
    texts.append((" ".join(words),))
    labels.append(label)
  return texts, np.array(labels)


def test_classes_are_learned_from_the_training_split_only():
  rng = random.Random(0)
  keywords = {0: "dull", 1: "fine", 2: "superb"}
  train_texts, train_labels = _texts(rng, 300, keywords)
  test_texts, test_labels = _texts(rng, 100, keywords)
  flipped = np.where(test_labels == 0, 1, 0)  # labels the texts do not support
  scores = baselines.tfidf(("accuracy", "f1_macro"), 4, train_texts, train_labels,
                           {"test": (test_texts, test_labels), "eval": (test_texts, flipped)})
  assert scores["test_tfidf_accuracy"] == 1.0 and scores["test_tfidf_f1_macro"] == 1.0
  assert scores["eval_tfidf_accuracy"] < 0.5
  assert set(scores) == {"test_tfidf_accuracy", "test_tfidf_f1_macro", "eval_tfidf_accuracy",
                         "eval_tfidf_f1_macro"}


def test_its_predictions_are_a_tfidf_logistic_regression():
  rng = random.Random(1)
  texts, labels = _texts(rng, 200, {0: "bad", 1: "good", 2: "bad"})  # 0 and 2 look alike
  held_texts, held_labels = _texts(rng, 100, {0: "bad", 1: "good", 2: "bad"})
  scores = baselines.tfidf(("accuracy",), 3, texts, labels, {"test": (held_texts, held_labels)})
  vectorizer = sklearn.feature_extraction.text.TfidfVectorizer(ngram_range=(1, 2),
                                                               sublinear_tf=True)
  model = sklearn.linear_model.LogisticRegression(max_iter=2000).fit(
      vectorizer.fit_transform([t[0] for t in texts]), labels)
  expected = (model.predict(vectorizer.transform([t[0] for t in held_texts]))
              == held_labels).mean()
  assert scores["test_tfidf_accuracy"] == pytest.approx(expected)
  assert 0.5 < expected < 0.9  # class 1 is found, 0 and 2 are a coin toss


def test_scores_and_pairs():
  rng = random.Random(2)

  def pairs(count):
    texts, targets = [], []
    for _ in range(count):
      goods = rng.randrange(4)
      first = " ".join(rng.sample(WORDS, 4) + ["good"] * goods)
      second = " ".join(rng.sample(WORDS, 4) + ["good"] * (3 - goods) + ["bad"] * goods)
      texts.append((first, second))
      targets.append(float(goods))
    return texts, np.array(targets)

  train, test = pairs(400), pairs(100)
  scores = baselines.tfidf(("pearson", "spearman"), 1, *train, {"test": test})
  assert scores["test_tfidf_pearson"] > 0.9 and scores["test_tfidf_spearman"] > 0.9


def test_the_linear_probe_scores_standardized_features():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 400)
  features = rng.normal(size=(400, 16)) * 100.0  # a large scale the probe standardizes
  features[:, 3] += labels * 800.0  # one feature carries the label
  accuracy = baselines.linear_probe(features[:300], labels[:300], features[300:], labels[300:])
  assert accuracy > 0.95
  noise = rng.normal(size=(400, 16))
  assert baselines.linear_probe(noise[:300], labels[:300], noise[300:], labels[300:]) < 0.7
