"""A synthloop project on disk, and the Python API that every CLI command calls.

A round is: collect labels that arrived -> train -> evaluate -> score the pool -> select -> route.
Each step reads and writes the store, so a run stopped anywhere resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from synthloop import active
from synthloop.config import CONFIG_FILE, STATE_DIR, Config, load_config
from synthloop.data import scan_table
from synthloop.errors import SynthloopError
from synthloop.labelers import get_labeler
from synthloop.metrics import evaluate
from synthloop.models import TextClassifier, featurizer_needs_fit, load_model, model_options, save_model, texts_key
from synthloop.store import NewLabel, Store, source_rank
from synthloop.task import TaskSpec, load_task

# Whole-pool feature matrices are kept in memory between rounds of one process only up to this size.
FEATURE_CACHE_MAX_ROWS = 200_000
# Pool uncertainty is tracked on this many unlabeled examples (the first by id: a fixed pseudo-random sample).
POOL_STATS_SAMPLE = 5000
# Incremental scoring: when the model changes, the previous model's most uncertain examples are re-scored,
# plus a random slice of the rest so that no example keeps a stale score forever.
RESCORE_TOP = 2000
RESCORE_SLICE = 10_000
# Rows per chunk when the pool is streamed from the store to synthloop.scale (select with an engine).
SCORE_CHUNK_SIZE = 50_000


@dataclass
class ImportResult:
    rows: int
    added: int
    already_stored: int
    duplicates_in_file: int
    labels_added: int
    other_split: int  # texts already stored in the other split, left where they are


@dataclass
class RoundResult:
    number: int
    resumed: bool
    model_version: int
    n_labels: int
    metrics: dict | None
    queried: int
    labels_collected: int
    seconds: float


def checkpoint(step: str, number: int) -> None:
    # Lets the crash tests stop a real process at a known step and kill -9 it there.
    if os.environ.get("SYNTHLOOP_PAUSE_AT") == step:
        print(f"PAUSED {step} {number}", flush=True)
        time.sleep(3600)


class _StoreCache:
    """The LLM client's cache interface over the store's cache table."""

    def __init__(self, store: Store):
        self.get, self.put = store.cache_get, store.cache_put


class Project:
    def __init__(self, root: str | Path = "."):
        self.root = Path(root).resolve()
        self.config: Config = load_config(self.root / CONFIG_FILE)
        self.state_dir.mkdir(exist_ok=True)
        self.store = Store.open(self.state_dir / "store.db")
        self._featurizers: dict[str, object] = {}
        self._feature_cache: dict[str, tuple[dict[str, int], object]] = {}
        self._llm = None
        self.llm_budget: float | None = None  # $ the LLM may still spend tonight (nightly --max-cost), None: no cap
        self.last_scored: int | None = None
        self.unreachable: dict[str, float] = {}  # server URL -> when it last failed every retry (see ArgillaLabeler)

    # creation -----------------------------------------------------------------------------------
    @classmethod
    def init(cls, root: str | Path, task: TaskSpec | str | Path, **settings) -> Project:
        root = Path(root)
        if (root / CONFIG_FILE).exists():
            raise SynthloopError(f"{root / CONFIG_FILE} already exists; use that project or choose another folder")
        spec = task if isinstance(task, TaskSpec) else load_task(task)
        config = Config(task=spec)
        for section, values in settings.items():
            current = getattr(config, section)
            setattr(config, section, current.model_copy(update=values))
        config = Config.model_validate(config.model_dump())
        root.mkdir(parents=True, exist_ok=True)
        (root / STATE_DIR).mkdir(exist_ok=True)
        (root / CONFIG_FILE).write_text(config.dump(), encoding="utf-8")
        return cls(root)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def task(self) -> TaskSpec:
        return self.config.task

    def close(self) -> None:
        self.store.close()

    # data ---------------------------------------------------------------------------------------
    def import_file(self, path: str | Path, text_col: str = "text", label_col: str | None = None,
                    id_col: str | None = None, split: str = "pool", gold: bool = False) -> ImportResult:
        """Import examples. Labels of a test file, or of a pool file with gold=True, stay hidden: they
        score the model (test) or answer the simulated reviewer (pool). Other pool labels train the model.

        The file is streamed twice, never loaded whole: a first pass checks every row, so bad input stores
        nothing; the second stores it batch by batch, a transaction each. A run killed during the second pass
        leaves the batches stored so far, and importing the file again adds the rest (ids are stable)."""
        if split not in ("pool", "test"):
            raise SynthloopError(f"split must be 'pool' or 'test', not {split!r}")
        if split == "test" and label_col is None:
            raise SynthloopError("a test split needs labels; pass --label-col with the column that holds them")
        plan = scan_table(path, text_col, label_col, id_col, allowed_labels=self.task.label_names)
        result = ImportResult(rows=plan.rows, added=0, already_stored=0, duplicates_in_file=plan.duplicates,
                              labels_added=0, other_split=0)
        before = self._label_total()
        for batch in plan.batches():
            self._import_batch(batch, split, hidden=split == "test" or gold, result=result)
        result.labels_added = self._label_total() - before
        return result

    def _import_batch(self, batch, split: str, hidden: bool, result: ImportResult) -> None:
        # Ids are unique across the file's batches (the first pass kept each id's first row), so `stored`
        # is what the store held before this import, never a row an earlier batch added.
        stored = self.store.existing_ids(batch.ids)
        rows, new_labels = [], []
        for eid, text, label in zip(batch.ids, batch.texts, batch.labels):
            if stored.get(eid, split) != split:
                result.other_split += 1
                continue
            if eid in stored:
                result.already_stored += 1
            else:
                rows.append({"id": eid, "text": text, "origin": "pool" if split == "pool" else "import",
                             "split": split, "gold": label if hidden else None})
            if label is not None and not hidden:
                new_labels.append(NewLabel(eid, label, "import", confidence=1.0))
        result.added += self.store.add_examples(rows, new_labels)

    def _label_total(self) -> int:
        return sum(n for _, _, n in self.store.label_counts())

    def export(self, path: str | Path) -> int:
        import pandas as pd

        path = Path(path)
        frame = pd.DataFrame(self.store.labeled_export(), columns=["id", "text", "label", "source"])
        if path.suffix == ".parquet":
            frame.to_parquet(path, index=False)
        elif path.suffix in (".jsonl", ".ndjson"):
            frame.to_json(path, orient="records", lines=True, force_ascii=False)
        elif path.suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            raise SynthloopError(f"cannot export to {path.suffix!r}; use .csv, .jsonl or .parquet")
        return len(frame)

    # LLM ----------------------------------------------------------------------------------------
    def llm_client(self):
        """The project's LLM client; the key comes from the environment variable the config names."""
        if self._llm is None:
            from synthloop.llm.client import LLMClient

            cfg = self.config.llm
            self._llm = LLMClient(
                cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env, base_url_env=cfg.base_url_env,
                timeout=cfg.timeout, max_retries=cfg.max_retries,
                concurrency=cfg.concurrency, response_format=cfg.response_format,
                cache=_StoreCache(self.store), prices=cfg.prices)
        return self._llm

    def record_llm_usage(self, results, purpose: str, round_: int | None) -> None:
        model = self.config.llm.model
        self.store.record_llm_calls([
            {"purpose": purpose, "model": model, "prompt_tokens": r.usage.prompt_tokens,
             "completion_tokens": r.usage.completion_tokens, "cost": r.usage.cost, "latency": r.usage.latency,
             "cached": r.cached, "ok": r.value is not None, "round": round_}
            for r in results
        ])

    def generate(self, per_class: int | dict[str, int], round_: int | None = None, consistency_filter: bool | None = None):
        from synthloop.synth import generate

        # Attributed to the round whose model trains on it, so its cost shows in that round's row.
        round_ = self.store.next_round_number() if round_ is None else round_
        return generate(self, per_class, round_=round_, consistency_filter=consistency_filter)

    def topup(self, round_: int):
        """Fresh synthetic examples for classes that real labels leave short, conditioned on their real texts."""
        from collections import Counter

        from synthloop.synth import generate, topup_needs

        cfg, k = self.config.synth, len(self.task.label_names)
        rows = self.store.training_set()
        real = [r for r in rows if source_rank(r[3]) < source_rank("synthetic")]
        needs = topup_needs(Counter(r[2] for r in real), Counter(r[2] for r in rows) + Counter(lab for _, lab in self.task.examples()),
                            self.task.label_names, cfg.topup_threshold or 0.5 / k, cfg.topup_target or 0.75 / k,
                            cfg.topup_max_per_round)
        # A resumed round (after a crash, or `synthloop query` then `round`) tops up what is left of its cap.
        already = self.store.synthetic_added(round_)
        needs = {lab: n for lab, n in ((lab, min(n, cfg.topup_max_per_round - already.get(lab, 0)))
                                       for lab, n in needs.items()) if n > 0}
        if not needs:
            return None
        budget = self.llm_budget
        if budget is not None and budget <= 0:
            # The night's $ cap (nightly --max-cost) is spent: generation waits for a night with money left.
            return None
        examples = {label: [r[1] for r in real if r[2] == label][-20:] for label in needs}
        started = time.time()
        report = generate(self, needs, examples=examples, round_=round_, topup=True)
        if budget is not None:  # what generation spent is gone from what the labelers may spend tonight
            self.llm_budget = budget - self.store.llm_cost_since(started)
        return report

    # features -----------------------------------------------------------------------------------
    def _new_model(self) -> TextClassifier:
        cfg = self.config.model
        return TextClassifier(labels=self.task.label_names, name=cfg.name, calibrate=cfg.calibrate,
                              embed_model=cfg.embed_model, seed=self.config.loop.seed,
                              **model_options(self.task, self.state_dir))

    def _featurizer(self, model: TextClassifier, train_texts: list[str]):
        if featurizer_needs_fit(model.name):
            sample = self.store.pool_texts_sample(self.config.loop.featurizer_pool_sample, self.config.loop.seed)
            fit_texts = sorted(set(sample) | set(train_texts))
        else:
            fit_texts = []
        key = f"{model.name}:{model.embed_model}:{texts_key(fit_texts)}"
        if key not in self._featurizers:
            self._featurizers = {key: model.fit_featurizer(fit_texts)}
            self._feature_cache = {}
        return key, self._featurizers[key]

    def _features(self, key: str, featurizer, ids: list[str], texts: list[str]):
        """Feature rows for the given examples, reusing rows computed in earlier rounds of this process."""
        if not ids:
            return None  # no rows: a zero-shot model needs none, another model refuses to fit
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

    # steps --------------------------------------------------------------------------------------
    def training_data(self) -> tuple[list[str], list[str], list[str], np.ndarray]:
        """ids, texts, labels and weights: stored labels plus the task's own examples."""
        rows = self.store.training_set()
        ids = [r[0] for r in rows]
        texts = [r[1] for r in rows]
        labels = [r[2] for r in rows]
        weight = self.config.model.synthetic_weight
        weights = [weight if source_rank(r[3]) >= source_rank("synthetic") else 1.0 for r in rows]
        for text, label in self.task.examples():
            ids.append("task:" + text)
            texts.append(text)
            labels.append(label)
            weights.append(weight)
        return ids, texts, labels, np.asarray(weights, dtype=float)

    def n_real_labels(self) -> int:
        return sum(1 for r in self.store.training_set() if source_rank(r[3]) < source_rank("synthetic"))

    def train(self, round_: int | None = None) -> tuple[int, TextClassifier]:
        ids, texts, labels, weights = self.training_data()
        model = self._new_model()
        key, featurizer = self._featurizer(model, texts)
        X = self._features(key, featurizer, ids, texts)
        model.fit(texts, labels, sample_weight=weights, featurizer=featurizer, X=X)
        model.featurizer_key_ = key
        version = self.store.next_model_version()
        path = self.state_dir / "models" / f"v{version:04d}.joblib"
        save_model(model, path)
        self.store.add_model(version, round_, model.name, str(path.relative_to(self.root)), len(texts))
        return version, model

    def training_changed(self) -> bool:
        """Whether the labeled set differs from what the latest model was trained on."""
        last = self.store.latest_model()
        return last is None or last["n_train"] != len(self.training_data()[0])

    def _last_metrics(self) -> dict | None:
        return next((r["metrics"] for r in reversed(self.store.rounds()) if r["metrics"]), None)

    def load_model(self, version: int | None = None) -> tuple[int, TextClassifier]:
        row = self.store.latest_model() if version is None else self.store.model(version)
        if row is None:
            raise SynthloopError("no model yet; run `synthloop train` or `synthloop round` first")
        return row["version"], load_model(self.root / row["path"])

    def evaluate(self, model: TextClassifier) -> dict | None:
        texts, gold = self.store.test_set()
        if not texts:
            return None
        ids = [f"test:{t}" for t in texts]
        key, featurizer = self._cached_featurizer(model)
        X = self._features(key, featurizer, ids, texts)
        pred = model.classes_[model.predict_proba_features(X).argmax(axis=1)]
        return evaluate(gold, list(pred), self.task.label_names)

    def monitor(self, round_: int, model: TextClassifier) -> dict:
        """Label-free signals: uncertainty over the unlabeled pool, and the stopping criterion's state."""
        key, featurizer = self._cached_featurizer(model)
        ids, texts = self.store.unlabeled_pool(limit=POOL_STATS_SAMPLE)
        pool = active.pool_uncertainty(active.FittedView(model), self._features(key, featurizer, ids, texts)) if ids else None
        stop_ids, stop_texts = self.store.stop_set(self.config.loop.stop_set_size)
        X_stop = self._features(key, featurizer, stop_ids, stop_texts) if stop_ids else None
        current = list(model.classes_[model.predict_proba_features(X_stop).argmax(axis=1)]) if stop_ids else []
        previous, history = None, []
        for info in self.store.rounds():
            if info["number"] < round_ and info["metrics"]:
                history.append((info["metrics"].get("stopping") or {}).get("kappa"))
        before = self.store.round(round_ - 1) if round_ > 0 else None
        if before and before["model_version"] and stop_ids:
            _, prev_model = self.load_model(before["model_version"])
            if getattr(prev_model, "featurizer_key_", None) == key:  # same features: reuse the rows computed above
                previous = list(prev_model.classes_[prev_model.predict_proba_features(X_stop).argmax(axis=1)])
            else:
                previous = list(prev_model.predict(stop_texts))
        cfg = self.config.loop
        stopping = active.stabilizing_predictions(previous, current, history, cfg.stop_kappa, cfg.stop_window)
        return {"pool": pool, "stopping": stopping}

    def _cached_featurizer(self, model: TextClassifier):
        key = getattr(model, "featurizer_key_", None)
        if key is None or key not in self._featurizers:
            key = f"loaded:{id(model.featurizer_)}"
            self._featurizers = {key: model.featurizer_}
            self._feature_cache = {}
        return key, model.featurizer_

    def select(self, round_: int, model: TextClassifier, n: int | None = None, strategy: str | None = None,
               labeler: str | None = None, incremental: bool = False, engine: str | None = None,
               address: str | None = None) -> int:
        """Score the unlabeled pool, pick the next batch and store it as pending queries. With an engine
        ("local" or "ray", see synthloop.scale) the pool is streamed from the store in chunks instead."""
        n = self.config.loop.batch_size if n is None else n
        strategy = strategy or self.config.loop.strategy
        if engine is not None:
            return self._select_streamed(round_, model, n, strategy, labeler, engine, address)
        ids, texts = self.store.unlabeled_pool()
        if not ids or n <= 0:
            return 0
        if incremental and strategy in active.POINTWISE:
            return self._select_incremental(round_, model, ids, texts, n, strategy, labeler)
        key, featurizer = self._cached_featurizer(model)
        X = self._features(key, featurizer, ids, texts)
        X_training = None
        if strategy == "ranked-batch":
            t_ids, t_texts, _, _ = self.training_data()
            X_training = self._features(key, featurizer, t_ids, t_texts)
        picked, scores = active.select(strategy, model, X, n, X_training=X_training, seed=self.config.loop.seed + round_)
        picks = [(ids[i], None if scores is None else float(scores[k])) for k, i in enumerate(picked)]
        return self.store.add_queries(round_, picks, strategy, routed_to=labeler or self.config.loop.labeler)

    def _select_streamed(self, round_, model, n, strategy, labeler, engine, address) -> int:
        """Every unlabeled example is scored each time: per-example cached scores would make the store's
        score table as big as the pool, which is what streaming is for avoiding."""
        from synthloop.scale import score_pool

        if n <= 0:
            return 0
        streamed = 0

        def chunks():
            nonlocal streamed
            for ids, texts in self.store.unlabeled_pool_chunks(SCORE_CHUNK_SIZE):
                streamed += len(ids)
                yield ids, texts

        # ranked-batch prefers candidates unlike the labeled set, as the in-memory strategy does.
        training = self.training_data()[1] if strategy == "ranked-batch" else None
        picks = score_pool(model, chunks(), strategy=strategy, k=n, engine=engine, address=address,
                           chunk_size=SCORE_CHUNK_SIZE, training_texts=training)
        self.last_scored = streamed
        return self.store.add_queries(round_, picks, strategy, routed_to=labeler or self.config.loop.labeler)

    def _select_incremental(self, round_, model, ids, texts, n, strategy, labeler) -> int:
        """Score only examples never scored, plus (when the model changed) the previous model's most
        uncertain ones and a random slice; the rest keep their cached scores."""
        import random

        version = self.store.round(round_)["model_version"]
        current = self.store.cached_scores(version, strategy)
        ever = self.store.scored_ids(strategy)
        unlabeled = set(ids)
        todo = {i for i in ids if i not in ever}
        last = self.store.latest_scored_version(strategy)
        if last is not None and last != version:
            old = self.store.cached_scores(last, strategy)
            ranked = sorted((i for i in old if i in unlabeled), key=lambda i: (-old[i], i))
            todo |= set(ranked[:RESCORE_TOP])
            stale = sorted(unlabeled - todo - set(current))
            todo |= set(random.Random(version).sample(stale, min(RESCORE_SLICE, len(stale))))
        todo -= set(current)
        if todo:
            position = {eid: k for k, eid in enumerate(ids)}
            todo_ids = sorted(todo, key=position.get)
            key, featurizer = self._cached_featurizer(model)
            X = self._features(key, featurizer, todo_ids, [texts[position[i]] for i in todo_ids])
            values = active.uncertainty(strategy, model.predict_proba_features(X))
            new = dict(zip(todo_ids, map(float, values)))
            self.store.save_scores(version, strategy, new)
            current.update(new)
        self.last_scored = len(todo)
        ranked = sorted((i for i in current if i in unlabeled), key=lambda i: (-current[i], i))
        picks = [(i, current[i]) for i in ranked[:n]]
        return self.store.add_queries(round_, picks, strategy, routed_to=labeler or self.config.loop.labeler)

    def collect(self, round_: int | None = None) -> int:
        """Store the labels that every labeler with submitted queries has ready; never waits for more. A
        labeler whose server is unreachable (Argilla down) is skipped with a warning: the loop never blocks
        on humans, and what they submitted is collected by a later round."""
        import logging

        pending = {q.routed_to for q in self.store.queries(status="pending", submitted=True)}
        added = 0
        for name in sorted(pending):
            labeler = get_labeler(name, self)
            try:
                labels = labeler.collect()
            except getattr(labeler, "defers_on", ()) as err:
                logging.getLogger("synthloop").warning(
                    "%s; its labels wait for a later round or `synthloop review pull`", err.summary)
                continue
            added += self.store.record_labels(labels, round_)
        return added

    def route(self, round_: int) -> int:
        """Hand this round's pending queries to their labeler, with what earlier rounds could not hand out (a
        server down then; a night whose --max-labels the leftovers filled selects nothing new), then take
        whatever the labelers have ready."""
        pending = self.store.queries(status="pending", round_=round_)
        ids = {q.example_id for q in pending}
        pending += [q for q in self.store.queries(status="pending", submitted=False) if q.example_id not in ids]
        self._hand_out(pending)
        return self.collect(round_)

    def _hand_out(self, pending) -> None:
        import logging

        for name in sorted({q.routed_to for q in pending}):
            labeler = get_labeler(name, self)
            mine = [q for q in pending if q.routed_to == name]
            deferrable = getattr(labeler, "defers_on", ())
            try:
                labeler.submit(mine)
            except deferrable as err:
                logging.getLogger("synthloop").warning(
                    "%s; %d queries stay pending and go out with the next round or `synthloop review push`",
                    err.summary, sum(1 for q in self.store.queries(status="pending", routed_to=name, submitted=False)))
                continue
            self.store.mark_submitted([q.example_id for q in mine])

    # the round ----------------------------------------------------------------------------------
    def round(self, query: bool = True, n: int | None = None, strategy: str | None = None,
              route: bool = True, labeler: str | None = None, incremental: bool = False,
              retrain: bool = True, engine: str | None = None, address: str | None = None) -> RoundResult:
        """One round. With route=False it stops after selecting and stays open: `label` or the next
        `round` hands the queries out and closes it."""
        start = time.perf_counter()
        number, resumed = self.store.open_round()
        info = self.store.round(number)
        timings = dict(info["timings"] or {})

        t = time.perf_counter()
        collected = self.collect(number)
        timings["collect"] = time.perf_counter() - t
        checkpoint("collected", number)

        if info["model_version"] is None and not retrain and not self.training_changed():
            last = self.store.latest_model()
            self.store.update_round(number, model_version=last["version"], metrics=self._last_metrics())
            info = self.store.round(number)
        if info["model_version"] is None:
            t = time.perf_counter()
            version, model = self.train(number)
            timings["train"] = time.perf_counter() - t
            t = time.perf_counter()
            metrics = self.evaluate(model)
            metrics = {"n_labels": self.n_real_labels(), **(metrics or {}), **self.monitor(number, model)}
            timings["evaluate"] = time.perf_counter() - t
            self.store.update_round(number, metrics=metrics, timings=timings)
        else:
            version, model = self.load_model(info["model_version"])
        checkpoint("trained", number)

        if self.config.synth.topup:
            t = time.perf_counter()
            self.topup(number)
            added = self.store.synthetic_added(number)
            if added:
                counts = dict(self.store.round(number)["counts"] or {})
                self.store.update_round(number, counts={**counts, "synthetic_added": dict(sorted(added.items()))})
            timings["topup"] = time.perf_counter() - t
        checkpoint("augmented", number)

        if query and not self.store.queries(round_=number):
            t = time.perf_counter()
            self.select(number, model, n=n, strategy=strategy, labeler=labeler, incremental=incremental,
                        engine=engine, address=address)
            timings["select"] = time.perf_counter() - t
        checkpoint("selected", number)
        if not route:
            info = self.store.round(number)
            queried = len(self.store.queries(round_=number))
            return RoundResult(number, resumed, version, (info["metrics"] or {}).get("n_labels", 0),
                               info["metrics"], queried, collected, time.perf_counter() - start)

        t = time.perf_counter()
        collected += self.route(number)
        timings["route"] = time.perf_counter() - t
        checkpoint("routed", number)

        info = self.store.round(number)
        queried = len(self.store.queries(round_=number))
        counts = {**(info["counts"] or {}), "queried": queried, "labels_collected": collected,
                  "labels_total": self.n_real_labels()}
        self.store.update_round(number, status="done", finished_at=time.time(), timings=timings, counts=counts)
        return RoundResult(number, resumed, version, (info["metrics"] or {}).get("n_labels", 0),
                           info["metrics"], queried, collected, time.perf_counter() - start)

    def label(self, labeler: str | None = None) -> int:
        """Hand every pending query to its labeler (or to `labeler`, rerouting them) and store what is ready."""
        pending = self.store.queries(status="pending")
        if labeler is not None:
            get_labeler(labeler, self)  # fail on an unknown name before anything changes
            self.store.reroute([q.example_id for q in pending], labeler)
            pending = self.store.queries(status="pending")
        self._hand_out(pending)
        return self.collect(self.store.current_round())

    def loop(self, rounds: int, on_round=None, until_stable: bool = False) -> list[RoundResult]:
        results = []
        for _ in range(rounds):
            result = self.round()
            results.append(result)
            if on_round:
                on_round(result)
            if result.queried == 0 and not self.store.queries(status="pending"):
                break  # the pool is exhausted
            if until_stable and ((result.metrics or {}).get("stopping") or {}).get("should_stop"):
                break
        return results

    # reading ------------------------------------------------------------------------------------
    def predict(self, texts: list[str]) -> list[dict]:
        version, model = self.load_model()
        proba = model.predict_proba(texts)
        labels = list(model.classes_)
        return [
            {"text": text, "label": labels[int(p.argmax())], "probability": float(p.max()),
             "probabilities": dict(zip(labels, map(float, p))), "model_version": version}
            for text, p in zip(texts, proba)
        ]

    def status(self, measure_latency: bool = True) -> dict:
        """What the project holds, and what it cost: LLM spend, the latest model's latency on this machine
        (measured once per model version, then read from the store) and GPT-4o per request instead."""
        from synthloop.impact import status_impact

        counts = self.store.count_examples()
        by_source: dict[str, dict[str, int]] = {}
        for source, label, n in self.store.label_counts():
            by_source.setdefault(source, {})[label] = n
        rounds = self.store.rounds()
        last = next((r for r in reversed(rounds) if r["metrics"]), None)
        model = self.store.latest_model()
        return {
            "project": str(self.root),
            "task": self.task.name,
            "examples": {f"{split}/{origin}": n for (split, origin), n in sorted(counts.items())},
            "labels": by_source,
            "queries": self.store.query_counts(),
            "llm": self.store.llm_usage(),
            "rounds": len(rounds),
            "model_version": model["version"] if model else None,
            "last_metrics": None if last is None else {
                "round": last["number"], **{k: last["metrics"].get(k) for k in ("n_labels", "accuracy", "macro_f1")}},
            "impact": status_impact(self, measure=measure_latency),
        }

