"""A synthloop project on disk, and the Python API that every CLI command calls.

A round is: collect labels that arrived -> train -> evaluate -> score the pool -> select -> route.
Each step reads and writes the store, so a run stopped anywhere resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from synthloop import active, feature_rows, selection, shared_models
from synthloop.budget import Budget
from synthloop.config import CONFIG_FILE, STATE_DIR, Config, check_state, load_config, validate_config
from synthloop.data import scan_table
from synthloop.errors import SynthloopError
from synthloop.labelers import argilla_queue, get_labeler
from synthloop.metrics import evaluate
from synthloop.models import DEFAULT_EMBED_MODEL, TextClassifier, featurizer_needs_fit, load_model, model_options, save_model
from synthloop.round import RoundResult, check_choices, close_round, run_round
from synthloop.selection import Cached, InMemory, Scorer, Streamed
from synthloop.store import NewLabel, QueryStatus, Store
from synthloop.task import TaskSpec, load_task

# Whole-pool feature matrices are kept in memory between rounds of one process only up to this size.
FEATURE_CACHE_MAX_ROWS = 200_000
# Pool uncertainty is tracked on this many unlabeled examples (the first by id: a fixed pseudo-random sample).
POOL_STATS_SAMPLE = 5000
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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (line, reason) of rows left out (skip_invalid)


class _StoreCache:
    """The LLM client's cache interface over the store's cache table."""

    def __init__(self, store: Store):
        self.get, self.put = store.cache_get, store.cache_put


class Project:
    def __init__(self, root: str | Path = "."):
        self.root = Path(root).resolve()
        self.config: Config = load_config(self.root / CONFIG_FILE)
        check_state(self.root)
        # A project folder we may not write to (a shared, read-only copy) is still read: status, predict, export.
        self.store = Store.for_project(self.root, self.config.store.url, readonly=not os.access(self.state_dir, os.W_OK))
        self._featurizers: dict[str, object] = {}
        self._feature_cache: dict[str, tuple[dict[str, int], object]] = {}
        self._llm = None
        self.budget = Budget()  # what the LLM may still spend (nightly --max-cost sets a cap)
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
        config = validate_config(config.model_dump())
        check_choices(config)
        root.mkdir(parents=True, exist_ok=True)
        (root / STATE_DIR).mkdir(exist_ok=True)
        (root / CONFIG_FILE).write_text(config.dump(), encoding="utf-8")
        return cls(root)

    @property
    def llm_budget(self) -> float | None:
        """$ the LLM may still spend (None: no cap); the Budget object owns it."""
        return self.budget.left

    @llm_budget.setter
    def llm_budget(self, left: float | None) -> None:
        self.budget = Budget(left)

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
                    id_col: str | None = None, split: str = "pool", gold: bool = False,
                    skip_invalid: bool = False, first_label_wins: bool = False) -> ImportResult:
        """Import examples. Labels of a test file, or of a pool file with gold=True, stay hidden: they
        score the model (test) or answer the simulated reviewer (pool). Other pool labels train the model.

        The file is streamed twice, never loaded whole: a first pass checks every row, so bad input stores
        nothing; the second stores it batch by batch, a transaction each. A run killed during the second pass
        leaves the batches stored so far, and importing the file again adds the rest (ids are stable)."""
        if split not in ("pool", "test"):
            raise SynthloopError(f"split must be 'pool' or 'test', not {split!r}")
        if split == "test" and label_col is None:
            raise SynthloopError("a test split needs labels; pass --label-col with the column that holds them")
        plan = scan_table(path, text_col, label_col, id_col, allowed_labels=self.task.label_names, skip_invalid=skip_invalid,
                          first_label_wins=first_label_wins)
        result = ImportResult(rows=plan.rows, added=0, already_stored=0, duplicates_in_file=plan.duplicates,
                              labels_added=0, other_split=0, skipped=plan.skipped)
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
        if not path.parent.is_dir():
            raise SynthloopError(f"cannot export to {path}: folder {path.parent} does not exist; create it or pick another")
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
                cache=_StoreCache(self.store), prices=cfg.prices, deadline=cfg.deadline)
        return self._llm

    def usage_recorder(self, purpose: str, round_: int | None):
        """For complete_json_many(on_result=...): each request's usage is stored as it completes, so spend
        limits hold across a killed run."""
        return lambda result: self.record_llm_usage([result], purpose, round_)

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
        real = [r for r in rows if r.real]
        needs = topup_needs(Counter(r.label for r in real),
                            Counter(r.label for r in rows) + Counter(lab for _, lab in self.task.examples()), self.task.label_names,
                            cfg.topup_threshold or 0.5 / k, cfg.topup_target or 0.75 / k, cfg.topup_max_per_round)
        # A resumed round (after a crash, or `synthloop query` then `round`) tops up what is left of its cap.
        already = self.store.synthetic_added(round_)
        needs = {lab: n for lab, n in ((lab, min(n, cfg.topup_max_per_round - already.get(lab, 0)))
                                       for lab, n in needs.items()) if n > 0}
        if not needs:
            return None
        if self.budget.spent_out:
            # The night's $ cap (nightly --max-cost) is spent: generation waits for a night with money left.
            return None
        examples = {label: [r.text for r in real if r.label == label][-20:] for label in needs}
        started = time.time()
        report = generate(self, needs, examples=examples, round_=round_, topup=True)
        # What generation spent is gone from what the labelers may spend tonight.
        self.budget.spend(self.store.llm_cost_since(started))
        return report

    # features -----------------------------------------------------------------------------------
    def new_model(self) -> TextClassifier:
        """An unfitted classifier as the project's [model] settings make it."""
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
        key = feature_rows.featurizer_version(model, fit_texts)
        if key not in self._featurizers:
            # A featurizer an earlier process fitted on the same texts is on disk beside its models: load it.
            fitted = feature_rows.fitted_featurizer(self.state_dir / "models", key)
            self._featurizers = {key: model.fit_featurizer(fit_texts) if fitted is None else fitted}
            self._feature_cache = {}
        return key, self._featurizers[key]

    def _rows(self, key: str, featurizer) -> feature_rows.FeatureRows | None:
        """The on-disk rows of a featurizer version (none for a model loaded without its version key)."""
        if key.startswith("loaded:"):
            return None
        rows: feature_rows.FeatureRows | None = getattr(self, "_row_store", None)
        if rows is None or rows.key != key:
            rows = self._row_store = feature_rows.FeatureRows(self.state_dir / feature_rows.ROWS_DIR, key, featurizer)
        return rows

    def _features(self, key: str, featurizer, ids: list[str], texts: list[str]):
        """Feature rows for the given examples: read from the version's rows on disk (featurized once, by any
        process), else reusing rows computed in earlier rounds of this process."""
        if not ids:
            return None  # no rows: a zero-shot model needs none, another model refuses to fit
        rows = self._rows(key, featurizer)
        if rows is not None:
            return rows.get(ids, texts)
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
        key, featurizer = self._featurizer(model, [t for i, t in zip(ids, texts) if i.startswith("task:")])
        X = self._features(key, featurizer, ids, texts)
        model.fit(texts, labels, sample_weight=weights, featurizer=featurizer, X=X)
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
        return last is None or last["n_train"] != len(self.training_data()[0])

    def last_metrics(self) -> dict | None:
        """The newest metrics: the latest model's own (after a loop), else the last round's that has them."""
        latest = self.store.latest_model()
        if latest and latest["metrics"]:  # a refresh after the last round: the newest figures
            return latest["metrics"]
        return next((r["metrics"] for r in reversed(self.store.rounds()) if r["metrics"]), None)

    def load_model(self, version: int | None = None) -> tuple[int, TextClassifier]:
        row = self.store.latest_model() if version is None else self.store.model(version)
        if row is None:
            raise SynthloopError("no model yet; run `synthloop train` or `synthloop round` first")
        shared_models.restore(self.store, self.root, self.root / row["path"])
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
            # A model saved by train carries its featurizer's version key: its stored rows are its rows.
            key = key or f"loaded:{id(model.featurizer_)}"
            self._featurizers = {key: model.featurizer_}
            self._feature_cache = {}
        return key, model.featurizer_

    def scorer(self, round_: int, incremental: bool = False, engine: str | None = None,
               address: str | None = None) -> Scorer:
        """How the round scores its pool: streamed through synthloop.scale with an engine ("local" or "ray"),
        with per-example scores cached in the store (incremental), else all in memory."""
        pool = self.store.unlabeled_pool
        if engine is not None:
            return Streamed(lambda: self.store.unlabeled_pool_chunks(SCORE_CHUNK_SIZE), engine, address,
                            SCORE_CHUNK_SIZE, ray_notes=self.state_dir)
        if incremental:
            return Cached(pool, self._model_features, self.store, self.store.round(round_)["model_version"])
        return InMemory(pool, self._model_features)

    def _model_features(self, model: TextClassifier, ids: list[str], texts: list[str]):
        key, featurizer = self._cached_featurizer(model)
        return self._features(key, featurizer, ids, texts)

    def select(self, round_: int, model: TextClassifier, n: int | None = None, strategy: str | None = None,
               labeler: str | None = None, incremental: bool = False, engine: str | None = None,
               address: str | None = None, scorer: Scorer | None = None) -> int:
        """Score the unlabeled pool, pick the next batch and store it as pending queries, each with its
        uncertainty (synthloop.measures: higher = less sure), the same whichever scorer made it."""
        n = self.config.loop.batch_size if n is None else n
        strategy = strategy or self.config.loop.strategy
        n = argilla_queue.room(self, n, labeler or self.config.loop.labeler)  # a capped review queue takes what fits
        scorer = scorer or self.scorer(round_, incremental, engine, address)
        picks = selection.select(scorer, model, strategy, n, training=lambda: self.training_data()[:2],
                                 seed=self.config.loop.seed + round_)
        self.last_scored = scorer.scored
        return self.store.add_queries(round_, picks, strategy, routed_to=labeler or self.config.loop.labeler)

    def collect(self, round_: int | None = None) -> int:
        """Store what every labeler with submitted queries has ready (labels, skipped and failed queries, hand-offs
        to another labeler), each labeler's outcomes in one transaction; never waits for more. A labeler whose
        server is unreachable (Argilla down) is skipped with a warning: the loop never blocks on humans, and
        what they submitted is collected by a later round. Queries handed off (the hybrid labeler's doubtful
        ones) go out to their new labeler at once."""
        import logging

        pending = {q.routed_to for q in self.store.queries(status=QueryStatus.PENDING, submitted=True)}
        added, handed_to = 0, set()
        for name in sorted(pending):
            labeler = get_labeler(name, self)
            try:
                collected = labeler.collect()
            except labeler.defers_on as err:
                logging.getLogger("synthloop").warning(
                    "%s; its labels wait for a later round or `synthloop review pull`", err.summary)
                continue
            added += self.store.apply(collected, round_)
            handed_to |= {to for to, _ in collected.handoff.values()}
        if handed_to:
            self._hand_out([q for q in self.store.queries(status=QueryStatus.PENDING, submitted=False)
                            if q.routed_to in handed_to])
        return added

    def route(self, round_: int) -> int:
        """Hand this round's pending queries to their labeler, with what earlier rounds could not hand out (a
        server down then; a night whose --max-labels the leftovers filled selects nothing new), then take
        whatever the labelers have ready."""
        pending = self.store.queries(status=QueryStatus.PENDING, round_=round_)
        ids = {q.example_id for q in pending}
        pending += [q for q in self.store.queries(status=QueryStatus.PENDING, submitted=False) if q.example_id not in ids]
        self._hand_out(pending)
        return self.collect(round_)

    def _hand_out(self, pending) -> None:
        for name in sorted({q.routed_to for q in pending}):
            self.hand_out(name, [q for q in pending if q.routed_to == name])

    def hand_out(self, name: str, queries) -> None:
        """Submit queries to one labeler and mark what it took (with the job it made, if any) as submitted."""
        import logging

        labeler = get_labeler(name, self)
        try:
            submitted = labeler.submit(queries)
        except labeler.defers_on as err:
            logging.getLogger("synthloop").warning(
                "%s; %d queries stay pending and go out with the next round or `synthloop review push`",
                err.summary, len(self.store.queries(status=QueryStatus.PENDING, routed_to=name, submitted=False)))
            return
        self.store.mark_submitted(submitted.ids, submitted.meta)

    # the round ----------------------------------------------------------------------------------
    def round(self, query: bool = True, n: int | None = None, strategy: str | None = None,
              route: bool = True, labeler: str | None = None, incremental: bool = False,
              retrain: bool = True, engine: str | None = None, address: str | None = None,
              scorer: Scorer | None = None) -> RoundResult:
        """One round (synthloop.round). With route=False it stops after selecting and stays open: `label` or
        the next `round` hands the queries out and closes it. The pool is scored by `scorer` (see
        `Project.scorer`; incremental/engine/address choose one)."""
        return run_round(self, query=query, n=n, strategy=strategy, route=route, labeler=labeler,
                         incremental=incremental, retrain=retrain, engine=engine, address=address, scorer=scorer)

    def label(self, labeler: str | None = None) -> int:
        """Hand every pending query to its labeler (or to `labeler`, rerouting them) and store what is ready.
        A round left open after selecting (`query`, or round(route=False)) is closed here: its queries are out,
        so the next `round` trains on what came back and selects anew."""
        pending = self.store.queries(status="pending")
        if labeler is not None:
            check_choices(self.config, labeler=labeler)  # fail on an unknown name before anything changes
            self.store.reroute([q.example_id for q in pending], labeler)
            pending = self.store.queries(status="pending")
        self._hand_out(pending)
        number = self.store.current_round()
        added = self.collect(number)
        info = None if number is None else self.store.round(number)
        if info and info["status"] != "done" and info["model_version"] is not None and self.store.queries(round_=number):
            close_round(self, number, dict(info["timings"] or {}), added)
        return added

    def requeue(self, failed: bool = False, skipped: bool = False, labeler: str | None = None) -> dict:
        """Make failed and/or skipped examples selectable again (their queries are forgotten; a later round may
        pick them), and hand pending queries routed to a labeler that does not exist (a typo in an older
        version) to `labeler` (default: the project's). Returns what changed."""
        from synthloop.labelers import LABELERS

        target = labeler or self.config.loop.labeler
        check_choices(self.config, labeler=target)
        orphans = [q.example_id for q in self.store.queries(status=QueryStatus.PENDING) if q.routed_to not in LABELERS]
        self.store.reroute(orphans, target)
        statuses = [s for s, wanted in ((QueryStatus.FAILED, failed), (QueryStatus.SKIPPED, skipped)) if wanted]
        return {"requeued": self.store.requeue(statuses), "rerouted": len(orphans), "rerouted_to": target}

    def loop(self, rounds: int, on_round=None, until_stable: bool = False) -> list[RoundResult]:
        """Several rounds; then, when the last round brought labels, a model trained and evaluated on every
        label (`refresh`): what `predict`, `status` and `export` see after a loop covers all of them."""
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
        if results:
            self.refresh()
        return results

    def refresh(self) -> int | None:
        """Train and evaluate a model on every label when the latest model lacks some (a round's labels
        arrive after its model was trained); its metrics are kept with it. Returns its version, or None when
        the latest model is current. The next round trains its own, as every round does."""
        # On a shared store another machine may be training too: one writer at a time (a no-op on SQLite).
        with self.store.exclusive("refresh"):
            if not self.training_changed():
                return None
            version, model = self.train()
            self.store.set_model_metrics(version, {"n_labels": self.n_real_labels(), **(self.evaluate(model) or {})})
            return version

    # reading ------------------------------------------------------------------------------------
    @staticmethod
    def _metrics_summary(last_round: dict | None, model: dict | None) -> dict | None:
        """The newest metrics and what they cover: the latest model's own (trained on every label after a loop),
        else those of the last round that has them; n_labels says how many real labels that model saw."""
        keys = ("n_labels", "accuracy", "macro_f1")
        if model and model["metrics"]:
            return {"round": last_round["number"] if last_round else None, "model_version": model["version"],
                    **{k: model["metrics"].get(k) for k in keys}}
        if last_round is None:
            return None
        return {"round": last_round["number"], "model_version": last_round["model_version"],
                **{k: last_round["metrics"].get(k) for k in keys}}

    def predict(self, texts: list[str]) -> list[dict]:
        version, model = self.load_model()
        return model.predict_rows(texts, version)

    def status(self, measure_latency: bool = True) -> dict:
        """What the project holds, and what it cost: LLM spend, the latest model's latency on this machine
        (measured once per model version, then read from the store) and GPT-4o per request instead."""
        from synthloop.impact import status_impact
        from synthloop.nightly_report import recent_runs

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
            "query_reasons": self.store.query_reasons(),
            "llm": self.store.llm_usage(),
            "rounds": len(rounds),
            "model_version": model["version"] if model else None,
            "last_metrics": self._metrics_summary(last, model),
            "impact": status_impact(self, measure=measure_latency),
            "runs": recent_runs(self.store, 5),  # the nightly job's last runs, a failed one too
        }

