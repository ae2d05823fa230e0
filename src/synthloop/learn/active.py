"""Query strategies: plain functions `(classifier, X, n) -> indices`, modAL's contract.

modAL's `ActiveLearner` breaks on scikit-learn >= 1.8 (modAL issue #196), and the loop's state
lives in the store anyway, so its strategy functions are called on our own fitted model.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import numpy as np
from sklearn.metrics import cohen_kappa_score

from synthloop.errors import UnknownChoice
from synthloop.learn.measures import MEASURES, ranked_by, top_k, uncertainty

# Ranked batch compares every candidate with every chosen one; capping the candidates keeps it sub-quadratic.
RANKED_BATCH_CANDIDATES = 2000


class FittedView:
    """What modAL's strategies expect of a learner: predict_proba on features, and the training features."""

    on_transformed = False

    def __init__(self, model, X_training=None):
        self.model = model
        self.X_training = X_training

    def predict_proba(self, X, **_):
        # Strategies and the pool statistics ask for the same matrix's probabilities: compute them once.
        if X is not getattr(self, "_last_X", None):
            self._last_X, self._last_proba = X, self.model.predict_proba_features(X)
        return self._last_proba


least_confident, margin, entropy = (ranked_by(name) for name in MEASURES)  # synthloop.learn.measures.ranked_by


def ranked_batch_candidates(n: int) -> int:
    """How many of the most uncertain rows (least-confident) ranked batch chooses among."""
    return max(RANKED_BATCH_CANDIDATES, 4 * n)


def ranked_batch_among(classifier, X_candidates, n: int) -> np.ndarray:
    """modAL's uncertainty_batch_sampling (Cardoso et al.: uncertainty plus diversity from the training set)
    on candidate rows already cut to the most uncertain; indices into X_candidates."""
    from modAL.batch import uncertainty_batch_sampling  # lazily, as in measures.py: modAL pulls in scipy.stats

    picked, _ = uncertainty_batch_sampling(classifier, X_candidates, n_instances=min(n, X_candidates.shape[0]))
    return np.asarray(picked, dtype=int).ravel()


def ranked_batch(classifier, X, n: int):
    """Uncertainty plus diversity, run on the most uncertain candidates only."""
    scores = uncertainty("least-confident", classifier.predict_proba(X))
    candidates, values, _ = top_k(np.arange(X.shape[0]), scores, ranked_batch_candidates(n))
    picked = ranked_batch_among(classifier, X[candidates], n)
    return candidates[picked], values[picked]


def random_sampling(classifier, X, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.choice(X.shape[0], size=n, replace=False), None


def cold_start(classifier, X, n: int, seed: int = 0):
    """Diverse picks until every class has a few real labels, then diverse margin (synthloop.learn.coldstart)."""
    from synthloop.learn.coldstart import cold_start as pick

    return pick(classifier, X, n, seed=seed)


STRATEGIES: dict[str, Callable] = {
    "cold-start": cold_start,
    "least-confident": least_confident,
    "margin": margin,
    "entropy": entropy,
    "ranked-batch": ranked_batch,
    "random": random_sampling,
}
POINTWISE = tuple(MEASURES)  # strategies that rank each row by its own score: a pool can be scored in pieces


def get_strategy(name: str) -> Callable:
    """A built-in name, or `package.module:function` (also `package.module.function`) naming a modAL-style strategy:
    a Python function whose first three parameters take (classifier, X, n_instances). Anything else is refused
    before it is called: `--strategy os.system` must not run a shell command with the pool as its argument."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    choices = f"choose one of {', '.join(STRATEGIES)}, or give module:function for a strategy of your own"
    module_name, _, func_name = name.replace(":", ".").rpartition(".")
    func = None
    if module_name and func_name.isidentifier():
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError, ValueError):
            pass
    if func is None:
        raise UnknownChoice(f"unknown strategy {name!r}; {choices}")
    if not _is_strategy(func):
        raise UnknownChoice(f"{name!r} is not a query strategy (a Python function f(classifier, X, n_instances)); "
                            f"{choices}")
    return func


def _is_strategy(func) -> bool:
    if not inspect.isfunction(func):  # builtins (os.system), classes, modules: not a strategy
        return False
    positional = [p for p in inspect.signature(func).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


def select(strategy: str, model, X, n: int, X_training=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of the n rows of X to label next, with the strategy's score for each when it gives one
    (built-in strategies give the measure registry's uncertainty: higher = less sure)."""
    n = min(n, X.shape[0])
    if n <= 0:
        return np.array([], dtype=int), None
    func = get_strategy(strategy)
    view = FittedView(model, X_training)
    result = func(view, X, n, seed=seed) if func in (random_sampling, cold_start) else func(view, X, n)
    indices, scores = result if isinstance(result, tuple) else (result, None)
    indices = np.asarray(indices, dtype=int).ravel()
    return indices, (None if scores is None else np.asarray(scores, dtype=float).ravel())


# Stopping criteria -------------------------------------------------------------------------------

def pool_uncertainty(view: FittedView, X) -> dict:
    """How unsure the model is over the unlabeled pool: a label-free signal of progress."""
    from modAL.uncertainty import classifier_entropy, classifier_margin

    proba = view.predict_proba(X)
    return {
        "n": int(X.shape[0]),
        "mean_confidence": float(proba.max(axis=1).mean()),
        "mean_margin": float(classifier_margin(view, X).mean()),
        "mean_entropy": float(classifier_entropy(view, X).mean()),
    }


def stabilizing_predictions(previous: list[str] | None, current: list[str], history: list[float | None],
                            threshold: float = 0.99, window: int = 3) -> dict:
    """Bloodgood & Vijay-Shanker (2009): stop once consecutive models agree (Cohen's kappa on a fixed
    stop set) above the threshold for `window` rounds in a row."""
    if previous is None or len(previous) != len(current) or not current:
        return {"kappa": None, "stable_rounds": 0, "should_stop": False, "threshold": threshold, "window": window}
    kappa = 1.0 if list(previous) == list(current) else float(cohen_kappa_score(previous, current))
    stable = 0
    for value in [*history, kappa][::-1]:
        if value is None or value < threshold:
            break
        stable += 1
    return {"kappa": kappa, "stable_rounds": stable, "should_stop": stable >= window, "threshold": threshold, "window": window}
