"""The models' side of a project: features (fitted featurizers, feature rows on disk and in memory), training,
evaluation, the label-free monitors, and how a round scores its pool. `Project` hands these calls on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from synthloop.config import STATE_DIR, Config
from synthloop.errors import SynthloopError
from synthloop.learn import active, feature_rows, pool_rows
from synthloop.learn.metrics import evaluate
from synthloop.learn.model_files import load_model, save_model
from synthloop.learn.models import DEFAULT_EMBED_MODEL, TextClassifier, featurizer_needs_fit, model_options
from synthloop.learn.selection import Cached, InMemory, Scorer, Streamed
from synthloop.store import Store, shared_models
from synthloop.task import TaskSpec

# Whole-pool feature matrices are kept in memory between rounds of one process only up to this size.
FEATURE_CACHE_MAX_ROWS = 200_000
# Pool uncertainty is tracked on this many unlabeled examples (the first by id: a fixed pseudo-random sample).
POOL_STATS_SAMPLE = 5000
# Rows per chunk when the pool is streamed from the store to synthloop.learn.scale (select with an engine).
SCORE_CHUNK_SIZE = 50_000
# Self-training ([model] self_train_weight) draws its weak labels from this many unlabeled texts (the first by id).
SELF_TRAIN_POOL = 20_000


class Trainer:
    """Trains, evaluates and scores with the project's [model] settings; keeps one process's fitted
    featurizer and its feature rows between rounds."""

    def __init__(self, root: Path, config: Config, store: Store):
        self.root, self.config, self.store = root, config, store
        self.state_dir = root / STATE_DIR
        self._featurizers: dict[str, Any] = {}
        self._feature_cache: dict[str, tuple[dict[str, int], Any]] = {}
        self.row_store: feature_rows.FeatureRows | None = None

    @property
    def task(self) -> TaskSpec:
        return self.config.task

    def new_model(self) -> TextClassifier:
        """An unfitted classifier as the project's [model] settings make it."""
        cfg = self.config.model
        return TextClassifier(labels=self.task.label_names, name=cfg.name, calibrate=cfg.calibrate,
                              embed_model=cfg.embed_model, seed=self.config.loop.seed,
                              max_chars=self.config.limits.max_text_chars,
                              **model_options(self.task, self.state_dir))

    def featurizer(self, model: TextClassifier, train_texts: list[str]):
        if featurizer_needs_fit(model.name):
            sample = self.store.pool_texts_sample(self.config.loop.featurizer_pool_sample, self.config.loop.seed)
            fit_texts = sorted(set(sample) | set(train_texts))
        else:
            fit_texts = []
        key = feature_rows.featurizer_version(model, fit_texts)
        if key not in self._featurizers:
            # A featurizer an earlier process fitted on the same texts is on disk beside its models: load it.
            fitted = feature_rows.fitted_featurizer(self.state_dir / "models", key)
            self._featurizers = {key: model.fit_featurizer(fit_texts) if fitted is None else fitted}
            self._feature_cache = {}
        return key, self._featurizers[key]

    def rows(self, key: str, featurizer) -> feature_rows.FeatureRows | None:
        """The on-disk rows of a featurizer version (none for a model loaded without its version key)."""
        if key.startswith("loaded:"):
            return None
        rows = self.row_store
        if rows is None or rows.key != key:
            rows = self.row_store = feature_rows.FeatureRows(self.state_dir / feature_rows.ROWS_DIR, key, featurizer)
        return rows

    def features(self, key: str, featurizer, ids: list[str], texts: feature_rows.Texts):
        """Feature rows for the given examples: read from the version's rows on disk (featurized once, by any
        process), else reusing rows computed in earlier rounds of this process. `texts` may be a function
        that fetches the texts of the ids it is given: then only rows not stored yet cost a text read."""
        if not ids:
            return None  # no rows: a zero-shot model needs none, another model refuses to fit
        rows = self.rows(key, featurizer)
        if rows is not None:
            return rows.get(ids, texts)
        texts = feature_rows.all_texts(ids, texts)
        if len(ids) > FEATURE_CACHE_MAX_ROWS:
            return featurizer.transform(texts)
        index, matrix = self._feature_cache.get(key, ({}, None))
        missing = [i for i, eid in enumerate(ids) if eid not in index]
        if missing:
            new = featurizer.transform([texts[i] for i in missing])
            start = len(index)
            for offset, i in enumerate(missing):
                index[ids[i]] = start + offset
            if matrix is None:
                matrix = new
            elif sp.issparse(new):
                matrix = sp.vstack([matrix, new]).tocsr()
            else:
                matrix = np.vstack([matrix, new])
            self._feature_cache[key] = (index, matrix)
        return matrix[[index[eid] for eid in ids]]


    def training_data(self) -> tuple[list[str], list[str], list[str], np.ndarray]:
        """ids, texts, labels and weights: stored labels plus the task's own examples."""
        rows = self.store.training_set()
        ids = [r.example_id for r in rows]
        texts = [r.text for r in rows]
        labels = [r.label for r in rows]
        weight = self.config.model.synthetic_weight
        weights = [1.0 if r.real else weight for r in rows]
        for text, label in self.task.examples():
            ids.append("task:" + text)
            texts.append(text)
            labels.append(label)
            weights.append(weight)
        return ids, texts, labels, np.asarray(weights, dtype=float)

    def n_real_labels(self) -> int:
        return sum(1 for r in self.store.training_set() if r.real)

    def train(self, round_: int | None = None) -> tuple[int, TextClassifier]:
        ids, texts, labels, weights = self.training_data()
        # An embedding model classifies by similarity to the label prompts without any example (zero-shot).
        if len(set(labels)) < 2 and self.config.model.name not in DEFAULT_EMBED_MODEL:
            missing = sorted(set(self.task.label_names) - set(labels))
            raise SynthloopError(f"nothing to train on for {', '.join(map(repr, missing))}: a model needs examples of two "
                                 "classes or more. Add `examples = [...]` to those labels in the task, import labeled "
                                 "texts (`synthloop import FILE --label-col label`), or run `synthloop generate`")
        model = self.new_model()
        # The featurizer sees the pool sample and the task's own examples; labeled pool texts are pool texts, and
        # leaving them out keeps one featurizer version (and its stored rows) while labels arrive.
        key, featurizer = self.featurizer(model, [t for i, t in zip(ids, texts) if i.startswith("task:")])
        X = self.features(key, featurizer, ids, texts)
        model.fit(texts, labels, sample_weight=weights, featurizer=featurizer, X=X)
        if self.config.model.self_train_weight > 0:
            from synthloop.learn.selftrain import self_train

            pool_ids, pool_texts = self.store.unlabeled_pool(limit=SELF_TRAIN_POOL)
            X_pool = self.features(key, featurizer, pool_ids, pool_texts) if pool_ids else None
            model = self_train(model, X, labels, weights, X_pool, self.config.model.self_train_weight)
        model.featurizer_key_ = key
        version = self.store.next_model_version()
        path = self.state_dir / "models" / f"v{version:04d}.joblib"
        save_model(model, path)
        shared_models.publish(self.store, self.root, path, getattr(model, "featurizer_file_", None))
        self.store.add_model(version, round_, model.name, str(path.relative_to(self.root)), len(texts))
        return version, model

    def training_changed(self) -> bool:
        """Whether the labeled set differs from what the latest model was trained on."""
        last = self.store.latest_model()
        return last is None or last.n_train != len(self.training_data()[0])

    def last_metrics(self) -> dict | None:
        """The newest metrics: the latest model's own (after a loop), else the last round's that has them."""
        latest = self.store.latest_model()
        if latest and latest.metrics:  # a refresh after the last round: the newest figures
            return latest.metrics
        return next((r.metrics for r in reversed(self.store.rounds()) if r.metrics), None)

    def load_model(self, version: int | None = None) -> tuple[int, TextClassifier]:
        row = self.store.latest_model() if version is None else self.store.model(version)
        if row is None:
            raise SynthloopError("no model yet; run `synthloop train` or `synthloop round` first")
        shared_models.restore(self.store, self.root, self.root / row.path)
        return row.version, load_model(self.root / row.path)

    def evaluate(self, model: TextClassifier) -> dict | None:
        texts, gold = self.store.test_set()
        if not texts:
            return None
        ids = [f"test:{t}" for t in texts]
        key, featurizer = self.cached_featurizer(model)
        X = self.features(key, featurizer, ids, texts)
        pred = model.classes_[model.predict_proba_features(X).argmax(axis=1)]
        return evaluate(gold, list(pred), self.task.label_names)

    def monitor(self, round_: int, model: TextClassifier) -> dict:
        """Label-free signals: uncertainty over the unlabeled pool, and the stopping criterion's state."""
        key, featurizer = self.cached_featurizer(model)
        ids = next(iter(self.store.unlabeled_pool_ids(POOL_STATS_SAMPLE)), [])  # texts only for rows not stored
        pool = active.pool_uncertainty(active.FittedView(model), self.features(key, featurizer, ids, self.store.texts_of)) if ids else None
        stop_ids, stop_texts = self.store.stop_set(self.config.loop.stop_set_size)
        X_stop = self.features(key, featurizer, stop_ids, stop_texts) if stop_ids else None
        current = list(model.classes_[model.predict_proba_features(X_stop).argmax(axis=1)]) if stop_ids else []
        previous, history = None, []
        for info in self.store.rounds():
            if info.number < round_ and info.metrics:
                history.append((info.metrics.get("stopping") or {}).get("kappa"))
        before = self.store.round(round_ - 1) if round_ > 0 else None
        if before and before.model_version and stop_ids:
            _, prev_model = self.load_model(before.model_version)
            if getattr(prev_model, "featurizer_key_", None) == key:  # same features: reuse the rows computed above
                previous = list(prev_model.classes_[prev_model.predict_proba_features(X_stop).argmax(axis=1)])
            else:
                previous = list(prev_model.predict(stop_texts))
        cfg = self.config.loop
        stopping = active.stabilizing_predictions(previous, current, history, cfg.stop_kappa, cfg.stop_window)
        return {"pool": pool, "stopping": stopping}

    def cached_featurizer(self, model: TextClassifier):
        key = getattr(model, "featurizer_key_", None)
        if key is None or key not in self._featurizers:
            # A model saved by train carries its featurizer's version key: its stored rows are its rows.
            key = key or f"loaded:{id(model.featurizer_)}"
            self._featurizers = {key: model.featurizer_}
            self._feature_cache = {}
        return key, model.featurizer_

    def scorer(self, round_: int, incremental: bool = False, engine: str | None = None,
               address: str | None = None) -> Scorer:
        """How the round scores its pool: streamed through synthloop.learn.scale with an engine ("local" or "ray"),
        with per-example scores cached in the store (incremental), else all in memory."""
        pool = self.store.unlabeled_pool
        ids = lambda: self.store.unlabeled_pool_ids(SCORE_CHUNK_SIZE)  # noqa: E731
        in_memory = InMemory(pool, self.model_features, ids, self.store.texts_of, self.pool_row_chunks)
        if engine is not None:
            return Streamed(lambda: self.store.unlabeled_pool_chunks(SCORE_CHUNK_SIZE), engine, address,
                            SCORE_CHUNK_SIZE, ray_notes=self.state_dir, stored=in_memory)
        if incremental:
            info = self.store.round(round_)
            if info is None:  # a round scores its pool after open_round stored it: a bug, not a user error
                raise RuntimeError(f"round {round_} is not in the store")
            return Cached(pool, self.model_features, self.store, info.model_version, ids, self.store.texts_of)
        return in_memory

    def pool_row_chunks(self, model: Any):
        """The unlabeled pool as chunks of the model's stored feature rows (synthloop.learn.pool_rows), or None
        where they are not stored (a model loaded without its featurizer's version, a read-only folder)."""
        key, featurizer = self.cached_featurizer(model)
        rows = self.rows(key, featurizer)
        if rows is None:
            return None
        stamp = self.store.pool_stamp()
        pool = pool_rows.load(rows, stamp) or pool_rows.build(rows, stamp, self.store.pool_ids, self.store.texts_of)
        return None if pool is None else pool.chunks(self.store.taken_ids())

    def model_features(self, model: Any, ids: list[str], texts: feature_rows.Texts) -> Any:
        """selection's Features: the model's feature rows for these examples (any model a scorer is given)."""
        key, featurizer = self.cached_featurizer(model)
        return self.features(key, featurizer, ids, texts)
