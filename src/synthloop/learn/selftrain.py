"""Self-training: the unlabeled pool texts the model is surest of, added as weak labels, then a refit.

Off by default ([model] self_train_weight = 0): measured against the default in benchmarks/al_explore.md.
The weak labels are balanced (the same number per predicted class at most, a share of the real labels), so a
model that already favours one class cannot flood its own training set with it; they weigh less than 1.0,
so they never count as real labels (TextClassifier.real_counts_, the cold-start phase).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone

# Each class gets the texts most confidently predicted as it, at most this many per real label of the average
# class: a share per class ranked by confidence (class-balanced self-training, Zou et al. 2018), not one
# absolute threshold, since an uncalibrated model on a few labels gives some classes no 0.9 at all (tfidf-lr on
# 20 SMS labels: not one pool text).
PER_REAL = 1.0
# An optional floor on the best class's probability as well (0: the ranking alone).
THRESHOLD = 0.0


def pseudo_labels(model, X_pool, per_class: int, threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Rows of X_pool (indices) and their predicted labels: per class the per_class rows most confidently
    predicted as it, among those at or above the threshold; most confident first within a class."""
    if per_class <= 0 or X_pool is None or X_pool.shape[0] == 0:
        return np.array([], dtype=int), np.array([], dtype=object)
    proba = model.predict_proba_features(X_pool)
    best, confidence = proba.argmax(axis=1), proba.max(axis=1)
    rows, labels = [], []
    for k, label in enumerate(model.classes_):
        mine = np.flatnonzero((best == k) & (confidence >= threshold))
        mine = mine[np.lexsort((mine, -confidence[mine]))][:per_class]  # surest first, ties to the earlier row
        rows += list(mine)
        labels += [label] * len(mine)
    return np.asarray(rows, dtype=int), np.asarray(labels, dtype=object)


def self_train(model, X, y, sample_weight, X_pool, weight: float, threshold: float = THRESHOLD,
               per_real: float = PER_REAL):
    """A copy of the fitted `model` refitted on its training rows (X, y, sample_weight) plus weak labels from
    X_pool at `weight`; the model itself when there is nothing to add (weight 0, zero-shot, no confident row)."""
    if weight <= 0 or getattr(model, "clf_", None) is None or X is None:
        return model
    n_real = sum(model.real_counts_.values())
    per_class = int(round(per_real * n_real / max(len(model.classes_), 1)))
    rows, labels = pseudo_labels(model, X_pool, per_class, threshold)
    if not len(rows):
        return model
    X_all = sp.vstack([X, X_pool[rows]], format="csr") if sp.issparse(X) else np.vstack([np.asarray(X), X_pool[rows]])
    y_all = np.r_[np.asarray(y, dtype=object), labels]
    weights = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    w_all = np.r_[weights, np.full(len(rows), min(weight, 0.99))]  # < 1.0: never a real label
    refit = clone(model)
    refit.fit(None, y_all, sample_weight=w_all, featurizer=model.featurizer_, X=X_all)
    refit.weak_labels_ = len(rows)
    return refit
