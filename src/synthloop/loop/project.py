"""A synthloop project on disk, and the Python API that every CLI command calls.

A round is: collect labels that arrived -> train -> evaluate -> score the pool -> select -> route.
Each step reads and writes the store, so a run stopped anywhere resumes where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthloop.config import CONFIG_FILE, STATE_DIR, Config, check_state, load_config, validate_config
from synthloop.data import Batch, scan_table
from synthloop.errors import SynthloopError
from synthloop.labelers import argilla_queue
from synthloop.labelers.context import LabelContext
from synthloop.learn import selection
from synthloop.learn.models import TextClassifier
from synthloop.learn.selection import Scorer
from synthloop.loop.budget import Budget
from synthloop.loop.round import RoundResult, check_choices, close_round, collect, hand_out, hand_out_all, route_round, run_round
from synthloop.loop.training import Trainer
from synthloop.report.context import ReportContext
from synthloop.store import NewLabel, Query, QueryStatus, Store
from synthloop.task import TaskSpec, load_task
from synthloop.textcap import count_over

if TYPE_CHECKING:
    from synthloop.llm.client import LLMClient
    from synthloop.synth import GenerationReport


@dataclass
class ImportResult:
    rows: int
    added: int
    already_stored: int
    duplicates_in_file: int
    labels_added: int
    other_split: int  # texts already stored in the other split, left where they are
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (line, reason) of rows left out (skip_invalid)
    over_max_chars: int = 0  # texts longer than [limits] max_text_chars: stored whole, seen capped


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
        self.trainer = Trainer(self.root, self.config, self.store)  # features, training, evaluation, scoring
        self._llm: LLMClient | None = None
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

    def _import_batch(self, batch: Batch, split: str, hidden: bool, result: ImportResult) -> None:
        # Ids are unique across the file's batches (the first pass kept each id's first row), so `stored`
        # is what the store held before this import, never a row an earlier batch added.
        stored = self.store.existing_ids(batch.ids)
        rows, new_labels = [], []
        result.over_max_chars += count_over(batch.texts, self.config.limits.max_text_chars)
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
    def llm_client(self) -> LLMClient:
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

    def label_context(self) -> LabelContext:
        """What labelers and generation use (synthloop.labelers.context): a round makes one and shares it."""
        return LabelContext(self.store, self.config, self.llm_client, self.load_model, self.budget, self.unreachable,
                            feature_dir=str(self.state_dir / "features"))

    def report_context(self) -> ReportContext:
        """What the reports and `status`'s cost and impact read (synthloop.report.context)."""
        return ReportContext(self.root, self.store, self.config, self.load_model, self.new_model)

    def generate(self, per_class: int | dict[str, int], round_: int | None = None,
                 consistency_filter: bool | None = None) -> GenerationReport:
        from synthloop.synth import generate

        # Attributed to the round whose model trains on it, so its cost shows in that round's row.
        round_ = self.store.next_round_number() if round_ is None else round_
        return generate(self.label_context(), per_class, round_=round_, consistency_filter=consistency_filter)

    def topup(self, round_: int) -> GenerationReport | None:
        """Fresh synthetic examples for classes that real labels leave short (synthloop.synth.topup)."""
        from synthloop.synth import topup

        return topup(self.label_context(), round_)

    # models: synthloop.loop.training.Trainer -----------------------------------------------------------
    def new_model(self) -> TextClassifier:
        """An unfitted classifier as the project's [model] settings make it."""
        return self.trainer.new_model()

    def training_data(self) -> tuple[list[str], list[str], list[str], np.ndarray]:
        """ids, texts, labels and weights: stored labels plus the task's own examples."""
        return self.trainer.training_data()

    def n_real_labels(self) -> int:
        return self.trainer.n_real_labels()

    def train(self, round_: int | None = None) -> tuple[int, TextClassifier]:
        return self.trainer.train(round_)

    def train_scored(self) -> tuple[int, TextClassifier, dict | None]:
        """Train on every label, score on the test split and keep the metrics with the model version,
        so `status` shows a plain `train`'s figures as it shows a round's."""
        version, model = self.train()
        metrics = self.evaluate(model)
        self.store.set_model_metrics(version, {"n_labels": self.n_real_labels(), **(metrics or {})})
        return version, model, metrics

    def training_changed(self) -> bool:
        """Whether the labeled set differs from what the latest model was trained on."""
        return self.trainer.training_changed()

    def last_metrics(self) -> dict | None:
        return self.trainer.last_metrics()

    def load_model(self, version: int | None = None) -> tuple[int, TextClassifier]:
        return self.trainer.load_model(version)

    def evaluate(self, model: TextClassifier) -> dict | None:
        return self.trainer.evaluate(model)

    def monitor(self, round_: int, model: TextClassifier) -> dict:
        """Label-free signals: uncertainty over the unlabeled pool, and the stopping criterion's state."""
        return self.trainer.monitor(round_, model)

    def scorer(self, round_: int, incremental: bool = False, engine: str | None = None,
               address: str | None = None) -> Scorer:
        """How the round scores its pool (synthloop.loop.training.Trainer.scorer)."""
        return self.trainer.scorer(round_, incremental, engine, address)

    # steps --------------------------------------------------------------------------------------
    def select(self, round_: int, model: TextClassifier, n: int | None = None, strategy: str | None = None,
               labeler: str | None = None, incremental: bool = False, engine: str | None = None,
               address: str | None = None, scorer: Scorer | None = None) -> int:
        """Score the unlabeled pool, pick the next batch and store it as pending queries, each with its
        uncertainty (synthloop.learn.measures: higher = less sure), the same whichever scorer made it."""
        n = self.config.loop.batch_size if n is None else n
        strategy = strategy or self.config.loop.strategy
        labeler = labeler or self.config.loop.labeler
        n = argilla_queue.room(self.store, self.config.argilla, n, labeler)  # a capped review queue takes what fits
        scorer = scorer or self.scorer(round_, incremental, engine, address)
        picks = selection.select(scorer, model, strategy, n, training=lambda: self.training_data()[:2],
                                 seed=self.config.loop.seed + round_)
        self.last_scored = scorer.scored
        return self.store.add_queries(round_, picks, strategy, routed_to=labeler)

    def collect(self, round_: int | None = None) -> int:
        """Store what the labelers have ready, never waiting for more (synthloop.loop.round.collect)."""
        return collect(self.label_context(), round_)

    def route(self, round_: int) -> int:
        """Hand this round's pending queries (and earlier leftovers) out, then take what is ready."""
        return route_round(self.label_context(), round_)

    def hand_out(self, name: str, queries: Sequence[Query]) -> None:
        """Submit queries to one labeler and mark what it took as submitted."""
        hand_out(self.label_context(), name, queries)

    # the round ----------------------------------------------------------------------------------
    def round(self, query: bool = True, n: int | None = None, strategy: str | None = None,
              route: bool = True, labeler: str | None = None, incremental: bool = False,
              retrain: bool = True, engine: str | None = None, address: str | None = None,
              scorer: Scorer | None = None) -> RoundResult:
        """One round (synthloop.loop.round). With route=False it stops after selecting and stays open: `label` or
        the next `round` hands the queries out and closes it. The pool is scored by `scorer` (see
        `Project.scorer`; incremental/engine/address choose one)."""
        return run_round(self, query=query, n=n, strategy=strategy, route=route, labeler=labeler,
                         incremental=incremental, retrain=retrain, engine=engine, address=address, scorer=scorer)

    def label(self, labeler: str | None = None) -> int:
        """Hand every pending query to its labeler (or to `labeler`, rerouting them) and store what is ready.
        A round left open after selecting (`query`, or round(route=False)) is closed here: its queries are out,
        so the next `round` trains on what came back and selects anew."""
        pending = self.store.queries(status=QueryStatus.PENDING)
        if labeler is not None:
            check_choices(self.config, labeler=labeler)  # fail on an unknown name before anything changes
            self.store.reroute([q.example_id for q in pending], labeler)
            pending = self.store.queries(status=QueryStatus.PENDING)
        ctx = self.label_context()
        hand_out_all(ctx, pending)
        number = self.store.current_round()
        added = collect(ctx, number)
        info = None if number is None else self.store.round(number)
        if number is not None and info and info.status != "done" and info.model_version is not None \
                and self.store.queries(round_=number):
            close_round(self, number, dict(info.timings or {}), added)
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

    def loop(self, rounds: int, on_round: Callable[[RoundResult], object] | None = None,
             until_stable: bool = False) -> list[RoundResult]:
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
            return self.train_scored()[0]

    # reading ------------------------------------------------------------------------------------
    def predict(self, texts: list[str]) -> list[dict]:
        version, model = self.load_model()
        return model.predict_rows(texts, version)

    def status(self, measure_latency: bool = True) -> dict:
        """What the project holds, and what it cost (synthloop.loop.status)."""
        from synthloop.loop.status import project_status

        return project_status(self.report_context(), measure_latency)
