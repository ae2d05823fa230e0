"""`synthloop teach`: one person labels the pool in the terminal while the model retrains beside them.

This module is the session without a screen (synthloop.cli.teach_app draws it with Textual): a queue of
unlabeled examples, most uncertain first; answers stored one by one as `human:<user>` labels, so quitting
or a kill loses nothing; undo; and every N answers a new model version trained in a background thread,
which then re-ranks what is left of the queue.
"""

from __future__ import annotations

import getpass
import os
import threading
from collections import Counter
from dataclasses import dataclass

from synthloop.errors import SynthloopError
from synthloop.learn.measures import measure_of
from synthloop.learn.measures import uncertainty as measure_uncertainty
from synthloop.store import NewLabel

# Keys that are commands, so no label can take them as its initial.
COMMAND_KEYS = {"a": "accept", "s": "skip", "u": "undo", "q": "quit"}
# Examples scored per session at most (the first by id: ids are hashes, so a pseudo-random sample).
MAX_CANDIDATES = 20_000


@dataclass(frozen=True)
class Item:
    example_id: str
    text: str
    suggestion: str
    probability: float
    uncertainty: float  # higher = less sure (synthloop.learn.measures)


@dataclass(frozen=True)
class Step:
    """One thing the user did, kept for undo: an answer, or a skip (label None)."""

    item: Item
    label: str | None


def key_map(labels: list[str]) -> dict[str, str]:
    """key -> label: 1..9 for the first nine labels, and each label's initial when no other label and no
    command key (a, s, u, q) starts with it."""
    keys = {str(i + 1): label for i, label in enumerate(labels[:9])}
    initials = Counter(label[:1].lower() for label in labels)
    for label in labels:
        initial = label[:1].lower()
        if initial.isalpha() and initials[initial] == 1 and initial not in COMMAND_KEYS and initial not in keys:
            keys[initial] = label
    return keys


def default_user() -> str:
    return os.environ.get("USER") or getpass.getuser()


class TeachSession:
    """The labeling session. `start()` loads (or trains) a model and ranks the pool; `press(key)` answers,
    accepts, skips or undoes. After start(), only the background thread trains or scores, and the queue is
    only changed under a lock, so every public method may be called from the UI thread while a retrain runs."""

    def __init__(self, project, user: str | None = None, retrain_every: int = 10):
        user = (default_user() if user is None else user).strip()
        if not user:
            raise SynthloopError("no user name: pass --user NAME (or set $USER)")
        if retrain_every < 1:
            raise SynthloopError(f"--retrain-every must be at least 1, not {retrain_every}")
        self.project = project
        self.user = user
        self.source = f"human:{user}"
        self.retrain_every = retrain_every
        self.labels = list(project.task.label_names)
        self.keys = key_map(self.labels)
        strategy = project.config.loop.strategy
        # Ranking is per example: a strategy without a measure of its own (ranked-batch, random) ranks by
        # least-confident, the measure the loop scores such picks with (synthloop.learn.measures.DEFAULT_MEASURE).
        self.strategy = measure_of(strategy)
        self.queue: list[Item] = []
        self.history: list[Step] = []
        self.answered = 0  # answers given (and not undone) in this session
        self.since_retrain = 0
        self.counts: Counter[str] = Counter()  # this user's labels in the store, per class
        self.model_version: int | None = None
        self.metrics: dict | None = None
        self.error: str | None = None  # the last retrain's failure, shown in the status line
        self.revision = 0  # bumped on every change, so a UI knows when to redraw
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None

    # setup --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the latest model (train one if there is none), score it on the test split, rank the pool."""
        store = self.project.store
        if store.latest_model() is None:
            self.model_version, model = self.project.train()
        else:
            self.model_version, model = self.project.load_model()
        self.metrics = self.project.evaluate(model)
        self.counts = Counter({label: n for source, label, n in store.label_counts() if source == self.source})
        ids, texts = store.unlabeled_pool(limit=MAX_CANDIDATES)
        self.queue = self._rank(model, ids, texts)
        self.revision += 1

    def _rank(self, model, ids: list[str], texts: list[str]) -> list[Item]:
        if not ids:
            return []
        proba = model.predict_proba(texts)
        uncertainty = measure_uncertainty(self.strategy, proba)
        classes = list(model.classes_)
        items = [Item(eid, text, classes[int(p.argmax())], float(p.max()), float(u))
                 for eid, text, p, u in zip(ids, texts, proba, uncertainty)]
        return sorted(items, key=lambda it: (-it.uncertainty, it.example_id))

    # what the UI shows --------------------------------------------------------------------------
    @property
    def current(self) -> Item | None:
        with self._lock:
            return self.queue[0] if self.queue else None

    @property
    def retraining(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict:
        with self._lock:
            return {"user": self.user, "answered": self.answered, "labels": {lab: self.counts[lab] for lab in self.labels},
                    "total": sum(self.counts[lab] for lab in self.labels), "remaining": len(self.queue),
                    "model_version": self.model_version, "metrics": self.metrics, "retraining": self.retraining,
                    "error": self.error}

    # actions ------------------------------------------------------------------------------------
    def press(self, key: str) -> str | None:
        """Do what a key means; returns a short description of what happened, or None when the key means
        nothing here (then nothing changes). `q` is the UI's to handle."""
        key = key.lower()
        if key in self.keys:
            return self.answer(self.keys[key])
        if key == "a":
            item = self.current
            return None if item is None else self.answer(item.suggestion)
        if key == "s":
            return self.skip()
        if key == "u":
            return self.undo()
        return None

    def answer(self, label: str) -> str | None:
        if label not in self.labels:
            raise SynthloopError(f"unknown label {label!r}; the task's labels are {', '.join(self.labels)}")
        with self._lock:
            if not self.queue:
                return None
            item = self.queue[0]
            # Stored before anything else changes: once the screen moves on, the answer is on disk.
            self.project.store.record_labels([NewLabel(item.example_id, label, self.source, confidence=1.0)], None)
            self.queue.pop(0)
            self.history.append(Step(item, label))
            self.answered += 1
            self.since_retrain += 1
            self.counts[label] += 1
            self.revision += 1
        self.maybe_retrain()
        return f"stored {label}"

    def skip(self) -> str | None:
        with self._lock:
            if not self.queue:
                return None
            self.history.append(Step(self.queue.pop(0), None))
            self.revision += 1
        return "skipped"

    def undo(self) -> str | None:
        """Take back the last answer or skip of this session: its label leaves the store and the example
        comes back to the front of the queue."""
        with self._lock:
            if not self.history:
                return None
            step = self.history.pop()
            if step.label is not None:
                self.project.store.delete_label(step.item.example_id, self.source)
                self.answered -= 1
                self.since_retrain = max(0, self.since_retrain - 1)
                self.counts[step.label] -= 1
            self.queue.insert(0, step.item)
            self.revision += 1
        return f"undid {'the skip' if step.label is None else step.label}"

    # retraining ---------------------------------------------------------------------------------
    def maybe_retrain(self) -> bool:
        """Start a retrain in the background when N answers arrived since the last one and none is running."""
        with self._lock:
            if self.since_retrain < self.retrain_every or self.retraining:
                return False
            self.since_retrain = 0
            self._thread = threading.Thread(target=self._retrain, name="synthloop-teach-retrain", daemon=True)
            self._thread.start()
            self.revision += 1
        return True

    def _retrain(self) -> None:
        try:
            version, model = self.project.train()
            metrics = self.project.evaluate(model)
            with self._lock:
                rest = [(it.example_id, it.text) for it in self.queue[1:]]
            ranked = {it.example_id: it for it in self._rank(model, [r[0] for r in rest], [r[1] for r in rest])}
            with self._lock:
                # The shown example keeps its place and suggestion (the user may be about to accept it); the rest
                # is re-ranked, examples answered meanwhile are gone, and any not re-scored keep their old score.
                head, tail = self.queue[:1], [ranked.get(it.example_id, it) for it in self.queue[1:]]
                self.queue = head + sorted(tail, key=lambda it: (-it.uncertainty, it.example_id))
                self.model_version, self.metrics, self.error = version, metrics, None
        except Exception as e:  # noqa: BLE001 - a failed retrain must not end the session; the status line shows it
            self.error = f"retraining failed: {type(e).__name__}: {e}"
        finally:
            with self._lock:
                self.revision += 1

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a running retrain to finish; True when none is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.retraining


def status_line(status: dict) -> str:
    """The live line: labels so far per class, the latest test score, what is happening."""
    per_class = " · ".join(f"{lab} {n}" for lab, n in status["labels"].items())
    parts = [f"{status['total']} labels by {status['user']} ({per_class}), {status['answered']} this session",
             f"{status['remaining']} to go"]
    m = status["metrics"]
    version = f"model v{status['model_version']}" if status["model_version"] else "no model"
    if m:
        parts.append(f"{version}: test accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    else:
        parts.append(f"{version} (no test split to score it)")
    if status["retraining"]:
        parts.append("retraining…")
    if status["error"]:
        parts.append(status["error"])
    return " | ".join(parts)
