"""Choosing the next batch to label: one entry point, `select`, over a pluggable scorer.

A scorer answers one question, "the k unlabeled examples most uncertain under this measure", in its own way:
`InMemory` scores the whole pool at once, `Cached` keeps per-example scores in the store and re-scores only
what a new model changes, `Streamed` reads the pool from the store in chunks and scores them through
synthloop.learn.scale (every core, or a Ray cluster). The values are the measure registry's (synthloop.learn.measures),
so every scorer stores the same score for the same example and model.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from synthloop.errors import SynthloopError
from synthloop.learn import active
from synthloop.learn.measures import measure_of, top_k, uncertainty

# Cached scoring: when the model changes, the previous model's most uncertain examples are re-scored, plus a
# random slice of the rest so that no example keeps a stale score forever.
RESCORE_TOP = 2000
RESCORE_SLICE = 10_000

Pool = tuple[list[str], list[str]]  # (ids, texts), ids in ascending order
Features = Callable[[object, list[str], list[str]], object]  # (model, ids, texts) -> feature rows
# (model) -> the unlabeled pool as (ids, feature rows) chunks read straight from stored rows, or None where the
# model's rows are not stored (synthloop.learn.pool_rows)
RowChunks = Callable[[object], Iterable[tuple[np.ndarray, Any]] | None]


@dataclass
class Candidates:
    ids: list[str]
    scores: list[float]
    texts: list[str] | None = None


class Scorer(Protocol):
    scored: int  # examples scored by the last call (the rest were cached)

    def check(self, strategy: str) -> None:
        """Refuse a strategy this scorer cannot serve, before anything is selected."""

    def top(self, model, measure: str, k: int, with_texts: bool = False) -> Candidates:
        """The k unlabeled examples with the highest uncertainty, best first (score desc, id asc)."""

    def features(self, model, ids: list[str], texts: list[str]):
        """Feature rows of the given examples, as the model sees them."""

    def whole_pool(self, model) -> tuple[list[str], Any]:  # feature rows: sparse or dense, as the model makes them
        """Every unlabeled id and its feature rows, for strategies that look at the whole pool at once."""


def select(scorer: Scorer, model, strategy: str, n: int, training: Callable[[], Pool] | None = None,
           seed: int = 0) -> list[tuple[str, float]]:
    """The n examples to label next as (id, score), score = the strategy's measure (higher = less sure)."""
    if strategy == "cold-start" and not isinstance(scorer, InMemory):
        # Its k-means (central picks, then diverse margin) needs the whole pool at once: scored piece by piece
        # (cached, streamed), it is margin.
        strategy = "margin"
    scorer.check(strategy)
    if n <= 0:
        return []
    if strategy in active.POINTWISE:
        best = scorer.top(model, strategy, n)
        return list(zip(best.ids, best.scores))
    if strategy == "ranked-batch":
        best = scorer.top(model, "least-confident", active.ranked_batch_candidates(n), with_texts=True)
        if not best.ids:
            return []
        assert best.texts is not None  # asked for with_texts=True
        t_ids, t_texts = training() if training else ([], [])
        X_training = scorer.features(model, t_ids, t_texts) if t_ids else None
        view = active.FittedView(model, X_training)
        picked = active.ranked_batch_among(view, scorer.features(model, best.ids, best.texts), n)
        return [(best.ids[i], best.scores[i]) for i in picked]
    # random, or a modAL function given by path: it sees the whole pool; its picks are scored by the default measure
    ids, X = scorer.whole_pool(model)
    if not ids:
        return []
    picked, _ = active.select(strategy, model, X, n, seed=seed)
    scores = uncertainty(measure_of(strategy), model.predict_proba_features(X[picked]))
    return [(ids[i], float(s)) for i, s in zip(picked, scores)]


class InMemory:
    """The pool scored in this process. Given `ids` (the unlabeled ids, in chunks) and `texts_of` (the texts of
    some ids), pointwise strategies score it chunk by chunk from the feature rows, reading only the texts of
    rows not featurized yet and holding one chunk's rows at a time; otherwise `pool` (every id and text) is
    read at once and scored as one chunk. Given `row_chunks`, pointwise strategies score the chunks it yields
    instead, when it yields any: the pool's stored rows as they lie on disk, no id walked or looked up."""

    def __init__(self, pool: Callable[[], Pool], features: Features,
                 ids: Callable[[], Iterable[list[str]]] | None = None,
                 texts_of: Callable[[list[str]], list[str]] | None = None, row_chunks: RowChunks | None = None):
        self._pool, self._features, self._row_chunks = pool, features, row_chunks
        both = ids is not None and texts_of is not None
        self._ids: Callable[[], Iterable[list[str]]] | None = ids if both else None
        self._texts_of: Callable[[list[str]], list[str]] | None = texts_of if both else None
        self._loaded: Pool | None = None
        self.scored = 0

    def pool(self) -> Pool:
        if self._loaded is None:
            self._loaded = self._pool()
        return self._loaded

    def id_chunks(self) -> Iterable[list[str]]:
        return self._ids() if self._ids is not None else [self.pool()[0]]

    def all_ids(self) -> list[str]:
        return [i for chunk in self.id_chunks() for i in chunk]

    def texts_of(self, ids: list[str]) -> list[str]:
        if self._texts_of is not None:
            return self._texts_of(ids)
        text = dict(zip(*self.pool()))
        return [text[i] for i in ids]

    def check(self, strategy: str) -> None:
        active.get_strategy(strategy)

    def features(self, model, ids, texts):
        return self._features(model, list(ids), texts if callable(texts) else list(texts))

    def whole_pool(self, model):
        ids = self.all_ids()
        self.scored = len(ids)
        return ids, (self.features(model, ids, self.texts_of) if ids else None)

    def scored_chunks(self, model) -> Iterable[tuple[np.ndarray, Any]]:
        """(ids, feature rows) of the unlabeled pool, chunk by chunk."""
        stored = self._row_chunks(model) if self._row_chunks is not None else None
        if stored is not None:
            return stored
        return ((np.asarray(ids, dtype=str), self.features(model, ids, self.texts_of)) for ids in self.id_chunks() if ids)

    def top(self, model, measure, k, with_texts=False) -> Candidates:
        from synthloop.learn.pool_chunks import TopK

        best, self.scored = TopK(k), 0
        for ids, X in self.scored_chunks(model):
            if len(ids):
                self.scored += len(ids)
                scores = uncertainty(measure, model.predict_proba_features(X))
                best.add(*top_k(ids, scores, k)[:2])  # the chunk's k best, then the merge
        picked = _candidates(best.ids, best.scores)
        if with_texts:
            picked.texts = self.texts_of(picked.ids) if picked.ids else []
        return picked


class Cached(InMemory):
    """Scores kept in the store per (example, model version, measure): only examples never scored are scored,
    plus (when the model changed) the previous model's most uncertain ones and a random slice; the rest keep
    their cached score."""

    def __init__(self, pool: Callable[[], Pool], features: Features, store, model_version: int | None,
                 ids: Callable[[], Iterable[list[str]]] | None = None,
                 texts_of: Callable[[list[str]], list[str]] | None = None):
        # model_version is the round's stored model; None when a caller selects in a round that stored none
        # yet (Project.select with a model of its own), as it always could: its scores are kept under None.
        super().__init__(pool, features, ids, texts_of)
        self.store, self.version = store, model_version

    def top(self, model, measure, k, with_texts=False) -> Candidates:
        ids = self.all_ids()
        current = self.store.cached_scores(self.version, measure)
        ever = self.store.scored_ids(measure)
        unlabeled = set(ids)
        todo = {i for i in ids if i not in ever}
        last = self.store.latest_scored_version(measure)
        if last is not None and last != self.version:
            old = self.store.cached_scores(last, measure)
            ranked = sorted((i for i in old if i in unlabeled), key=lambda i: (-old[i], i))
            todo |= set(ranked[:RESCORE_TOP])
            stale = sorted(unlabeled - todo - set(current))
            todo |= set(random.Random(self.version).sample(stale, min(RESCORE_SLICE, len(stale))))
        todo -= set(current)
        if todo:
            position = {eid: i for i, eid in enumerate(ids)}
            todo_ids = sorted(todo, key=position.__getitem__)
            X = self.features(model, todo_ids, self.texts_of)
            new = dict(zip(todo_ids, map(float, uncertainty(measure, model.predict_proba_features(X)))))
            self.store.save_scores(self.version, measure, new)
            current.update(new)
        self.scored = len(todo)
        known = [i for i in ids if i in current]
        picked = _candidates(*top_k(np.asarray(known, dtype=str), np.array([current[i] for i in known], dtype=float), k))
        if with_texts:
            picked.texts = self.texts_of(picked.ids) if picked.ids else []
        return picked


class Streamed:
    """The pool read in chunks and scored through synthloop.learn.scale: memory bounded by the chunk size.
    Given `stored` (a project's chunked scorer over its feature rows), the local engine scores through it
    instead, in this process: reading stored rows beats workers that featurize every text again."""

    def __init__(self, chunks: Callable[[], Iterable[Pool]], engine: str = "local", address: str | None = None,
                 chunk_size: int = 50_000, ray_notes: Path | None = None, stored: InMemory | None = None):
        self.chunks, self.engine, self.address, self.chunk_size = chunks, engine, address, chunk_size
        self.ray_notes = ray_notes  # where a local Ray started for this is noted (synthloop.learn.ray_local)
        self.stored = stored if engine == "local" else None  # Ray workers on other nodes cannot read the rows
        self.scored = 0

    def check(self, strategy: str) -> None:
        from synthloop.learn.scale import check_streamable

        check_streamable(strategy, self.engine)

    def features(self, model, ids, texts):
        return model.transform(list(texts))

    def whole_pool(self, model):
        raise SynthloopError("this strategy needs the whole pool in memory; run it without --engine")

    def top(self, model, measure, k, with_texts=False) -> Candidates:
        from synthloop.learn.scale import most_uncertain

        if self.stored is not None:
            picked = self.stored.top(model, measure, k, with_texts)
            self.scored = self.stored.scored
            return picked
        self.scored = 0

        def counted() -> Iterator[Pool]:
            for ids, texts in self.chunks():
                self.scored += len(ids)
                yield ids, texts

        best = most_uncertain(model, counted(), measure, k, engine=self.engine, address=self.address,
                              chunk_size=self.chunk_size, with_texts=with_texts, ray_notes=self.ray_notes)
        return _candidates(best.ids, best.scores, best.texts)


def _candidates(ids, scores, texts=None) -> Candidates:
    return Candidates([str(i) for i in ids], [float(s) for s in scores], None if texts is None else list(texts))
