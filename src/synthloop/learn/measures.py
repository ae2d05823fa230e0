"""How unsure a model is about each example: the one registry of uncertainty measures.

Every value is on one scale: higher = less sure, 0 (certain) to 1 (as unsure as the measure can say).
They are modAL's measures (`classifier_uncertainty`, `classifier_margin`, `classifier_entropy`), turned to
that scale: margin is reported as 1 - (p1 - p2), entropy divided by ln(number of classes). Every
selection path (in memory, cached scores, streamed through synthloop.learn.scale), the stored query score and
Argilla's "uncertainty" metadata read these values, so a score means the same wherever it was made.

Selectors (which rows to label next) live in synthloop.learn.active; they rank by these measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from synthloop.errors import SynthloopError

# Scores closer than this are one score (a tie, broken by id): a dense BLAS product may differ in the last
# bit between batch sizes, and that must not change which ids are selected.
SCORE_DECIMALS = 12


class _Proba:
    """What modAL's measures ask of a classifier, over probabilities already computed."""

    def __init__(self, proba: np.ndarray):
        self.proba = proba

    def predict_proba(self, X, **_):
        return self.proba


# modAL is imported where a measure runs: its package pulls in scipy.stats and sklearn.ensemble (about a second of
# CPU), which the CLI commands that never score (init, import, status, export) should not pay.
def _least_confident(view) -> np.ndarray:
    from modAL.uncertainty import classifier_uncertainty

    return classifier_uncertainty(view, None)


def _margin(view) -> np.ndarray:
    from modAL.uncertainty import classifier_margin

    return 1.0 - classifier_margin(view, None)


def _entropy(view) -> np.ndarray:
    from modAL.uncertainty import classifier_entropy

    k = view.proba.shape[1]
    return classifier_entropy(view, None) / math.log(k) if k > 1 else np.zeros(view.proba.shape[0])


MEASURES: dict[str, Callable[[_Proba], np.ndarray]] = {
    "least-confident": _least_confident,
    "margin": _margin,
    "entropy": _entropy,
}
# The measure whose value is stored with a pick of a strategy that has no measure of its own (ranked-batch
# chooses its candidates by it; random and modAL functions given by path pick without one).
DEFAULT_MEASURE = "least-confident"


# Strategies scored by another's measure: cold-start ranks by margin (diverse margin) once its central-pick phase is over.
ALIASES = {"cold-start": "margin"}


def measure_of(strategy: str) -> str:
    """The measure a strategy's picks are scored with: its own, else the default."""
    return ALIASES.get(strategy) or (strategy if strategy in MEASURES else DEFAULT_MEASURE)


def uncertainty(measure: str, proba: np.ndarray) -> np.ndarray:
    """Each row's uncertainty under the measure, rounded to SCORE_DECIMALS: higher = less sure, in [0, 1]."""
    if measure not in MEASURES:
        raise SynthloopError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    proba = np.asarray(proba, dtype=float)
    if proba.shape[0] == 0:
        return np.zeros(0)
    values = np.asarray(MEASURES[measure](_Proba(proba)), dtype=float)
    return np.round(np.clip(values, 0.0, 1.0), SCORE_DECIMALS)


def top_k(ids: np.ndarray, scores: np.ndarray, k: int, texts: np.ndarray | None = None):
    """The k most uncertain rows, best first, under (score desc, id asc): a total order, so the k best of a
    chunk's k best are the k best overall and the result never depends on row order or chunking."""
    ids, scores = np.asarray(ids), np.asarray(scores, dtype=float)
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        cut = scores[part].min()
        above = np.flatnonzero(scores > cut)
        tied = np.flatnonzero(scores == cut)
        tied = tied[np.argsort(ids[tied], kind="stable")[: k - len(above)]]
        keep = np.concatenate([above, tied])
    else:
        keep = np.arange(len(scores))
    keep = keep[np.lexsort((ids[keep], -scores[keep]))]
    return ids[keep], scores[keep], (None if texts is None else texts[keep])


def ranked_by(measure: str) -> Callable:
    """modAL's uncertainty, margin and entropy sampling over this registry, as a strategy `(learner, X, n) ->
    (indices, scores)`: the n rows of X the model is least sure of, ties to the earlier row (the pool comes in
    id order, so to the smaller id, as the streamed and cached paths break them)."""

    def strategy(classifier, X, n: int):
        scores = uncertainty(measure, classifier.predict_proba(X))
        picked, values, _ = top_k(np.arange(len(scores)), scores, n)
        return picked, values

    strategy.__name__ = measure.replace("-", "_")
    return strategy
