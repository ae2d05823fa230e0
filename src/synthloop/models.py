"""Compact models: a featurizer plus a calibrated logistic regression, saved as one file per version."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion

from synthloop.errors import SynthloopError

MODEL_NAMES = ("tfidf-lr", "hashing-lr", "embed-lr")


def make_featurizer(name: str, embed_model: str = "all-MiniLM-L6-v2"):
    if name == "tfidf-lr":
        return FeatureUnion([
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=50_000)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, max_features=50_000)),
        ])
    if name == "hashing-lr":
        # No vocabulary to fit: any worker can vectorize any chunk of a pool of any size.
        return HashingVectorizer(ngram_range=(1, 2), n_features=2**20, alternate_sign=False, norm="l2")
    if name == "embed-lr":
        from synthloop.embed import SentenceEmbedder

        return SentenceEmbedder(model=embed_model)
    raise SynthloopError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def featurizer_needs_fit(name: str) -> bool:
    return name == "tfidf-lr"


def texts_key(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


class TextClassifier(ClassifierMixin, BaseEstimator):
    """Texts in, calibrated class probabilities out, with a column for every task label.

    `fit` accepts an already fitted featurizer so a loop can reuse one across rounds.
    """

    def __init__(self, labels: Sequence[str] = (), name: str = "tfidf-lr", C: float = 4.0,
                 calibrate: bool = True, embed_model: str = "all-MiniLM-L6-v2", seed: int = 0):
        self.labels = labels
        self.name = name
        self.C = C
        self.calibrate = calibrate
        self.embed_model = embed_model
        self.seed = seed

    def fit_featurizer(self, texts: Sequence[str]):
        featurizer = make_featurizer(self.name, self.embed_model)
        if featurizer_needs_fit(self.name):
            featurizer.fit(list(texts))
            for _, vectorizer in featurizer.transformer_list:
                # The terms cut by max_features: large, and only kept for introspection.
                vectorizer.stop_words_ = None
        return featurizer

    def fit(self, texts, y, sample_weight=None, featurizer=None, X=None):
        y = np.asarray(y, dtype=object)
        present = sorted(set(y))
        if len(present) < 2:
            raise SynthloopError(
                f"training needs labeled examples of at least two classes, got {present or 'none'}; "
                "add examples to the task's labels, import labels, or generate synthetic data"
            )
        self.classes_ = np.asarray(list(self.labels) or present, dtype=object)
        unknown = set(present) - set(self.classes_)
        if unknown:
            raise SynthloopError(f"labels {sorted(unknown)} are not in the task; add them to the task or fix the data")
        self.featurizer_ = featurizer if featurizer is not None else self.fit_featurizer(texts)
        if X is None:
            X = self.featurizer_.transform(list(texts))
        base = LogisticRegression(C=self.C, max_iter=2000, class_weight="balanced")
        _, counts = np.unique(y, return_counts=True)
        folds = min(3, int(counts.min()))
        if self.calibrate and folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
            self.clf_ = CalibratedClassifierCV(base, method="sigmoid", cv=cv)
        else:
            # Too few examples per class to hold some out: the plain logistic model is already probabilistic.
            self.clf_ = clone(base)
        from synthloop.sparse_fit import fit_used_columns

        fit_used_columns(self.clf_, X, y, sample_weight)  # on the columns the labeled rows use: same model, faster
        seen = list(self.clf_.classes_)
        self.columns_ = np.array([seen.index(c) if c in seen else -1 for c in self.classes_])
        return self

    def transform(self, texts):
        return self.featurizer_.transform(list(texts))

    def predict_proba_features(self, X) -> np.ndarray:
        raw = self.clf_.predict_proba(X)
        proba = np.zeros((raw.shape[0], len(self.classes_)))
        known = self.columns_ >= 0
        proba[:, known] = raw[:, self.columns_[known]]
        return proba

    def predict_proba(self, texts) -> np.ndarray:
        return self.predict_proba_features(self.transform(texts))

    def predict(self, texts) -> np.ndarray:
        return self.classes_[self.predict_proba(texts).argmax(axis=1)]


def save_model(model: TextClassifier, path: Path) -> None:
    """Write the classifier, and its featurizer once beside it: versions that share a featurizer share
    the file. Temporary file plus rename, so a crash never leaves a half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    featurizer = model.featurizer_
    key = getattr(model, "featurizer_key_", None) or str(id(featurizer))
    name = f"featurizer-{hashlib.sha1(key.encode()).hexdigest()[:16]}.joblib"
    if not (path.parent / name).exists():
        _atomic_dump(featurizer, path.parent / name)
    model.featurizer_, model.featurizer_file_ = None, name
    try:
        _atomic_dump(model, path)
    finally:
        model.featurizer_ = featurizer


def _atomic_dump(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    joblib.dump(obj, tmp)
    os.replace(tmp, path)


@lru_cache(maxsize=4)
def _load_featurizer(path: Path):
    return joblib.load(path)


def load_model(path: str | Path) -> TextClassifier:
    path = Path(path)
    if not path.is_file():
        raise SynthloopError(f"model file {path} is missing; run `synthloop train` to make a new version")
    try:
        model = joblib.load(path)
    except Exception as err:  # noqa: BLE001 - truncated or overwritten: pickle says so in many ways
        raise SynthloopError(f"model file {path} is damaged ({type(err).__name__}); run `synthloop train` to make a "
                             "new version from the labels in the store") from None
    if model.featurizer_ is None:
        model.featurizer_ = _load_featurizer(path.parent / model.featurizer_file_)
    return model
