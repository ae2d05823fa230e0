"""The served model's predict_proba without scikit-learn's per-call input checks.

For one short text, scikit-learn 1.9 spends most of a TextClassifier.predict_proba in validation
(check_array runs 22 times, each asking narwhals whether the input is a dataframe), not in the
arithmetic: for tfidf-lr, median 16 ms against 1.6 ms this way (300 calls, 2 cores, load average 8). The server
runs the same arithmetic directly: each vectorizer's counts, then TF-IDF's sublinear tf, idf and l2 norm; the
sentence embedding (hybrid-lr, embed-lr) computed for the request, never looked up in or added to the project's
embedding store; the logistic regressions' linear scores, one block of feature columns at a time (no stacking),
their sigmoid calibrators averaged as CalibratedClassifierCV does, and hybrid-lr's blend with its zero-shot
prior. `fast_predict_proba` checks the result against the model's own predict_proba before it is used and
returns None when they differ (another scikit-learn version, another kind of model), so the server falls back
to the plain call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, softmax

CHECK_TEXTS = ["warm up", "", "FREE entry: win a prize now, call 0800 123", "see you at lunch tomorrow?",
               "This product stopped working after two days; I want my money back.", "ok " * 300]


class Terms:
    """A TF-IDF block of some texts as (columns, values) per text: for the few short texts of a request, far
    cheaper to build and to score than a scipy sparse matrix (whose constructors and checks cost more than the
    arithmetic)."""

    def __init__(self, rows: list[tuple[np.ndarray, np.ndarray]], width: int):
        self.rows = rows
        self.shape = (len(rows), width)

    def __matmul__(self, W: np.ndarray) -> np.ndarray:
        return np.array([values @ W[columns] for columns, values in self.rows]).reshape(len(self.rows), W.shape[1])


@dataclass
class Rows:
    """Some texts' feature columns as blocks side by side, and their unit-norm sentence embeddings (or None)."""

    blocks: list
    embeddings: np.ndarray | None = None

    def scores(self, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """X @ W + b for X the blocks stacked, without stacking them: each block meets its own rows of W."""
        out, start = b, 0
        for block in self.blocks:
            width = block.shape[1]
            out = out + np.asarray(block @ W[start:start + width])
            start += width
        if start != W.shape[0]:
            raise ValueError(f"{start} feature columns for {W.shape[0]} coefficients")
        return out


def _linear(estimator):
    """(W, b) with scores = X @ W + b, one column per score the estimator's decision_function returns."""
    from sklearn.linear_model import LogisticRegression

    if type(estimator) is not LogisticRegression:
        return None
    return np.ascontiguousarray(estimator.coef_.T), estimator.intercept_.copy()


def _head(clf):
    """Rows -> probabilities in clf.classes_ order, for a LogisticRegression or a sigmoid CalibratedClassifierCV of one."""
    from sklearn.calibration import CalibratedClassifierCV

    if isinstance(clf, CalibratedClassifierCV):
        if clf.method != "sigmoid" or not hasattr(clf, "calibrated_classifiers_"):
            return None
        parts, linears, start = [], [], 0
        for cc in clf.calibrated_classifiers_:
            linear = _linear(cc.estimator)
            if linear is None or len(cc.calibrators) != linear[0].shape[1]:
                return None
            columns = np.searchsorted(cc.classes, cc.estimator.classes_)
            if len(cc.classes) == 2:
                columns = columns[1:] if len(columns) == 2 else columns + 1
            a = np.array([c.a_ for c in cc.calibrators], dtype=float)
            b = np.array([c.b_ for c in cc.calibrators], dtype=float)
            width = linear[0].shape[1]
            parts.append((slice(start, start + width), columns, a, b))
            linears.append(linear)
            start += width
        # Every fold's coefficients side by side: the features meet them in one pass, not one per fold. Not for
        # float32 coefficients (embed-lr): one product of all folds rounds differently from scikit-learn's one per fold.
        W_all = np.ascontiguousarray(np.hstack([W for W, _ in linears]))
        b_all = np.concatenate([b0 for _, b0 in linears])
        joint = W_all.dtype == np.float64
        n_classes = len(clf.classes_)

        def calibrated(X: Rows):
            all_scores = X.scores(W_all, b_all) if joint else None
            total = np.zeros(0)
            for k, ((where, columns, a, b), (W, b0)) in enumerate(zip(parts, linears)):
                scores = X.scores(W, b0) if all_scores is None else all_scores[:, where]
                proba = np.zeros((scores.shape[0], n_classes))
                proba[:, columns] = expit(-(a * scores + b))
                if n_classes == 2:
                    proba[:, 0] = 1.0 - proba[:, 1]
                else:
                    denominator = proba.sum(axis=1, keepdims=True)
                    proba = np.divide(proba, denominator, out=np.full_like(proba, 1 / n_classes), where=denominator != 0)
                total = proba if k == 0 else total + proba
            return total / len(parts)

        return calibrated
    linear = _linear(clf)
    if linear is None:
        return None
    W, b0 = linear

    def plain(X: Rows):
        scores = X.scores(W, b0)
        if scores.shape[1] == 1:
            p = expit(scores[:, 0])
            return np.column_stack([1 - p, p])
        return softmax(scores, axis=1)

    return plain


def _vectorizer(vectorizer) -> Callable:
    """texts -> vectorizer.transform(texts): a TfidfVectorizer's counts, sublinear tf, idf and l2 norm, as Terms."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    plain = (type(vectorizer) is TfidfVectorizer and vectorizer.norm in ("l2", None) and not vectorizer.binary
             and np.dtype(vectorizer.dtype) == np.float64)
    if not plain:
        return vectorizer.transform
    analyze, vocabulary = vectorizer.build_analyzer(), vectorizer.vocabulary_  # its preprocessing, cap included
    idf = getattr(vectorizer._tfidf, "idf_", None)  # absent with use_idf=False, as TfidfTransformer checks
    sublinear, l2, width = vectorizer.sublinear_tf, vectorizer.norm == "l2", len(vocabulary)

    def transform(texts):
        rows = []
        for text in texts:
            counts: dict[int, int] = {}
            for term in analyze(text):
                column = vocabulary.get(term)
                if column is not None:
                    counts[column] = counts.get(column, 0) + 1
            columns = np.fromiter(counts.keys(), dtype=np.intp, count=len(counts))
            values = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            if sublinear:
                values = np.log(values) + 1.0
            if idf is not None:
                values *= idf[columns]
            if l2:
                norm = np.sqrt(values @ values)
                if norm > 0:  # a text with no known term stays all zeros, as sklearn's normalize leaves it
                    values /= norm
            rows.append((columns, values))
        return Terms(rows, width)

    return transform


def _union(featurizer) -> list[Callable] | None:
    from sklearn.pipeline import FeatureUnion

    if not isinstance(featurizer, FeatureUnion) or featurizer.transformer_weights:
        return None
    parts = [t for _, t in featurizer.transformer_list if t not in ("drop", "passthrough")]
    return [_vectorizer(t) for t in parts] if len(parts) == len(featurizer.transformer_list) else None


def _features(featurizer) -> Callable[[list[str]], Rows] | None:
    from synthloop.learn.embed import SentenceEmbedder
    from synthloop.learn.models import HybridFeaturizer
    from synthloop.textcap import cap_texts

    if type(featurizer) is HybridFeaturizer:
        vectorizers = _union(featurizer.tfidf_)
        if vectorizers is None:
            return None
        embedder, weight, max_chars = featurizer._embedder(), featurizer.embed_weight, featurizer.max_chars

        def hybrid(texts):
            texts = cap_texts(texts, max_chars)
            # What HybridFeaturizer.combine puts in its matrix (the float32 product, as float64), and the
            # unit-norm vectors its embedding_block reads back from there.
            columns = np.asarray(weight * embedder.compute(texts), dtype=np.float64)
            return Rows([v(texts) for v in vectorizers] + [columns], columns / weight)

        return hybrid
    if type(featurizer) is SentenceEmbedder:
        return lambda texts: Rows([vectors := featurizer.compute(texts)], vectors)
    vectorizers = _union(featurizer)
    if vectorizers is not None:
        return lambda texts: Rows([v(texts) for v in vectorizers])
    return lambda texts: Rows([featurizer.transform(texts)])


def fast_predict_proba(model) -> Callable[[list[str]], np.ndarray] | None:
    """model.predict_proba's result by the direct route, or None where that route does not give the same numbers."""
    try:
        head, features = _head(model.clf_), _features(model.featurizer_)
        if head is None or features is None:
            return None
        columns, known = model.columns_, model.columns_ >= 0
        n_classes = len(model.classes_)
        prior = model.prior_weight()

        def predict_proba(texts: list[str]) -> np.ndarray:
            rows = features(list(texts))
            raw = head(rows)
            proba = np.zeros((raw.shape[0], n_classes))
            proba[:, known] = raw[:, columns[known]]
            if prior > 0:
                proba = (1 - prior) * proba + prior * model.zero_shot_of(rows.embeddings)
            return proba

        if np.allclose(predict_proba(CHECK_TEXTS), model.predict_proba(CHECK_TEXTS), rtol=0, atol=1e-9):
            return predict_proba
    except Exception:  # noqa: BLE001 - any surprise means: use the model's own predict_proba
        return None
    return None
