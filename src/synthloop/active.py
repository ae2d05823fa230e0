"""Query strategies: plain functions `(classifier, X, n) -> indices`, modAL's contract.

modAL's `ActiveLearner` breaks on scikit-learn >= 1.8 (modAL issue #196), and the loop's state
lives in the store anyway, so its strategy functions are called on our own fitted model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
from modAL.batch import uncertainty_batch_sampling
from modAL.uncertainty import entropy_sampling, margin_sampling, uncertainty_sampling

from synthloop.errors import SynthloopError

# Ranked batch compares every candidate with every chosen one; capping the candidates keeps it sub-quadratic.
RANKED_BATCH_CANDIDATES = 2000


class FittedView:
    """What modAL's strategies expect of a learner: predict_proba on features, and the training features."""

    on_transformed = False

    def __init__(self, model, X_training=None):
        self.model = model
        self.X_training = X_training

    def predict_proba(self, X, **_):
        return self.model.predict_proba_features(X)


def least_confident(classifier, X, n: int):
    return uncertainty_sampling(classifier, X, n_instances=n)


def margin(classifier, X, n: int):
    return margin_sampling(classifier, X, n_instances=n)


def entropy(classifier, X, n: int):
    return entropy_sampling(classifier, X, n_instances=n)


def ranked_batch(classifier, X, n: int):
    """Uncertainty plus diversity (Cardoso et al.), run on the most uncertain candidates only."""
    proba = classifier.predict_proba(X)
    uncertainty = 1 - proba.max(axis=1)
    k = min(X.shape[0], max(RANKED_BATCH_CANDIDATES, 4 * n))
    candidates = np.argpartition(-uncertainty, k - 1)[:k] if k < X.shape[0] else np.arange(X.shape[0])
    picked, scores = uncertainty_batch_sampling(classifier, X[candidates], n_instances=n)
    return candidates[np.asarray(picked, dtype=int)], scores


def random_sampling(classifier, X, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.choice(X.shape[0], size=n, replace=False), None


STRATEGIES: dict[str, Callable] = {
    "least-confident": least_confident,
    "margin": margin,
    "entropy": entropy,
    "ranked-batch": ranked_batch,
    "random": random_sampling,
}


def get_strategy(name: str) -> Callable:
    """A built-in name, or `package.module:function` / `package.module.function` for any modAL-style strategy."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    module_name, _, func_name = name.replace(":", ".").rpartition(".")
    if module_name:
        try:
            return getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError):
            pass
    raise SynthloopError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)} or give module.function")


def select(strategy: str, model, X, n: int, X_training=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of the n rows of X to label next, with the strategy's score for each when it gives one."""
    n = min(n, X.shape[0])
    if n <= 0:
        return np.array([], dtype=int), None
    func = get_strategy(strategy)
    view = FittedView(model, X_training)
    result = func(view, X, n, seed=seed) if func is random_sampling else func(view, X, n)
    indices, scores = result if isinstance(result, tuple) else (result, None)
    indices = np.asarray(indices, dtype=int).ravel()
    return indices, (None if scores is None else np.asarray(scores, dtype=float).ravel())
