"""What waits for reviewers in Argilla, and what they are shown: the policy behind `ArgillaLabeler`.

- **Pre-selection.** Argilla pre-selects a record's suggestion, so a reviewer who presses Enter stores it.
  Uncertainty sampling asks about examples the model is unsure of (p ≈ 0.5 for two classes), where its
  guess is a coin flip: a guess below `[argilla] suggest_min_confidence` is a hint in the record's
  `hints` field and metadata, never a suggestion (`scripts/bench_suggest.py` measures the wrong labels
  each threshold lets in).
- **Fresh guesses.** After a retrain, the records still waiting get the new model's suggestion, hints and
  uncertainty (records are updated in place by id), so one record never mixes two models' numbers.
- **A bounded queue.** With `[argilla] max_pending`, a round selects only what fits under the cap, pushes
  the most uncertain first, and withdraws the records no longer worth a person's time: answered by another
  path (labeled by the LLM, the oracle, an import or a re-check; rerouted) or now predicted with at least
  `[argilla] withdraw_confidence`. A record someone has started (any response, a draft too) stays.

Nothing here writes to the store: what a push or a tend means for it (queries withdrawn, the model the records
show) goes back to the caller, which stores it through the store's transition methods (synthloop.loop.review.tend,
synthloop.loop.round.hand_out).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from synthloop.config import ArgillaConfig
from synthloop.labelers.argilla_sdk import QUESTION, ArgillaUnreachable, sdk
from synthloop.store import Query, QueryStatus, Store
from synthloop.task import TaskSpec

if TYPE_CHECKING:
    from synthloop.labelers.context import LabelContext
    from synthloop.learn.models import TextClassifier

log = logging.getLogger("synthloop.argilla")

NAME = "argilla"
WITHDRAWN = QueryStatus.WITHDRAWN  # taken out of the review queue, its example stays out of the pool
LIVE = ("pending", "held")  # "held": a nightly run's leftover beyond --max-labels, pending again after the run


class ArgillaLabeler(Protocol):
    """What this policy asks of the labeler (synthloop.labelers.argilla.ArgillaLabeler implements it): the
    policy is written against these members only, so it does not import the labeler that calls it."""

    ctx: LabelContext
    cfg: ArgillaConfig
    dataset_name: str
    guesses: dict[str, Guess | None]

    @property
    def client(self) -> Any: ...
    def call(self, what: str, fn: Callable, *args, **kwargs) -> Any: ...
    def ensure_dataset(self) -> Any: ...
    def use_model(self, model: TextClassifier) -> None: ...
    def assess(self, queries: Sequence[Query]) -> dict[str, Guess | None]: ...
    def pick(self, guess: Guess | None, llm: dict) -> Pick | None: ...
    def records(self, queries: Sequence[Query]) -> list: ...
    def log(self, items: list, to_records: Callable, pushed: Callable | None = None,
            on_chunk: Callable[[int, int], None] | None = None) -> int: ...


@dataclass(frozen=True)
class Guess:
    """The current model's view of one example."""

    label: str
    confidence: float  # probability of `label`
    uncertainty: float  # the query's measure (higher = less sure): the "uncertainty" metadata


@dataclass(frozen=True)
class Waiting:
    """A record in Argilla that no annotator has completed yet."""

    started: bool  # someone answered it (a draft, a discard, or fewer submissions than min_submitted)
    suggestion_id: str | None  # the server id of its pre-selected suggestion, if it has one
    record: Any  # the SDK's record, which deletes by the server's own id


@dataclass(frozen=True)
class Pick:
    """A pre-selected suggestion."""

    value: str
    score: float | None
    agent: str


def preselect(guess: Guess | None, llm: dict, labels: Sequence[str], min_confidence: float,
              llm_model: str) -> Pick | None:
    """The model's guess; before there is a model, the LLM's answer; either only when at least
    `min_confidence` sure. An LLM answer without a confidence is not pre-selected."""
    if guess is not None:
        if guess.confidence >= min_confidence:
            return Pick(guess.label, round(guess.confidence, 3), "synthloop-model")
        return None
    confidence = llm.get("confidence")
    if llm.get("label") in labels and confidence is not None and float(confidence) >= min_confidence:
        return Pick(llm["label"], round(float(confidence), 3), f"llm:{llm.get('model') or llm_model}")
    return None


def _md(text) -> str:
    """User text (label names and descriptions, an LLM's answer) as literal Markdown."""
    return re.sub(r"([\\`*_\[\]<>|~])", r"\\\1", str(text))


def hints(query: Query, guess: Guess | None, pick: Pick | None = None, min_confidence: float = 0.0,
          labels: Sequence = ()) -> str:
    """Markdown shown beside the text: Argilla keeps one suggestion per question, so the LLM's answer
    (when the router sent the example on) is shown here and in the metadata; so is a guess too unsure to
    be pre-selected, and the labels' short descriptions (the UI hides the question's behind an icon and
    the guidelines in a collapsed panel)."""
    lines = []
    if guess is not None:
        unsure = "" if pick is not None else f" — not pre-selected (below {min_confidence:.2f})"
        lines.append(f"**Model:** {_md(guess.label)} ({guess.confidence:.2f}){unsure}")
    llm = (query.meta or {}).get("llm")
    if llm:
        answer = llm.get("label") or "no answer"
        conf = "" if llm.get("confidence") is None else f" ({llm['confidence']:.2f}, {llm.get('confidence_from', '')})"
        lines.append(f"**LLM {_md(llm.get('model', ''))}:** {_md(answer)}{conf}")
    lines = lines or ["No suggestion yet."]
    if labels:
        lines.append("")
        lines += [f"- **{_md(label.name)}**: {_md(label.description)}" if label.description
                  else f"- **{_md(label.name)}**" for label in labels]
    return "  \n".join(lines)


def question_description(task: TaskSpec) -> str:
    """Shown under the question, where the reviewer looks (the guidelines panel starts collapsed)."""
    return "; ".join(f"{label.name}: {label.description}" if label.description else label.name
                     for label in task.labels) + \
        ". A pre-selected label is the model's guess when it is sure enough; check it before you submit."


def room(store: Store, cfg: ArgillaConfig, n: int, routed_to: str) -> int:
    """How many new queries a round may route to Argilla: all `n` without a cap, else what fits under
    `[argilla] max_pending` beside the queries already waiting (pushed or not)."""
    cap = cfg.max_pending
    if routed_to != NAME or cap is None:
        return n
    waiting = sum(len(store.queries(status=s, routed_to=NAME)) for s in LIVE)
    return max(0, min(n, cap - waiting))


def _model_key(dataset: str) -> str:
    return f"argilla:model:{dataset}"


def pushed_with(store: Store, dataset: str) -> int | None:
    """The model version whose guesses the dataset's waiting records show; None before any push."""
    value = store.get_meta(_model_key(dataset))
    return None if value is None else value.get("version")


def model_meta(dataset: str, version: int | None) -> dict[str, dict]:
    """The fact that the dataset's waiting records now show this model's guesses, as the store keeps it (with
    the queries a push marks submitted, or with a tend's withdrawals)."""
    return {_model_key(dataset): {"version": version}}


@dataclass
class TendResult:
    """What tending the queue did in Argilla, and the fact the store keeps from it (`meta`, which the caller
    applies through Store.apply: the model the waiting records now show)."""

    refreshed: int = 0
    withdrawn: dict[str, int] = field(default_factory=dict)  # reason -> records taken out of the queue
    unreachable: str | None = None  # the error summary when Argilla did not answer
    meta: dict[str, dict] = field(default_factory=dict)


def tend(labeler: ArgillaLabeler, version: int, model: TextClassifier,
         withdraw: Callable[[dict[str, dict]], None], strict: bool = False) -> TendResult | None:
    """After a retrain: withdraw what is no longer worth a review, refresh what still waits. Nothing to do
    (None) when nothing was ever pushed or the waiting records already show this model's guesses. Argilla
    down: logged (raised when strict), and the next round or push tries again.

    Writes nothing to the store itself: the queries whose records it deleted go to `withdraw` ({example id:
    why}; the caller's Store.withdraw) as soon as the records are gone, so a refresh that fails afterwards
    cannot leave them pending; the result's `meta` is for the caller to apply once all went well."""
    store = labeler.ctx.store
    if not store.get_meta(_model_key(labeler.dataset_name)) or pushed_with(store, labeler.dataset_name) == version:
        return None
    labeler.use_model(model)
    result = TendResult()
    try:
        waiting = waiting_records(labeler)
        queries = {q.example_id: q for q in store.queries()}
        answered = [eid for eid, w in waiting.items() if not w.started and (
            eid not in queries or queries[eid].status not in LIVE or queries[eid].routed_to != NAME)]
        mine = [queries[eid] for eid in waiting if eid in queries and queries[eid].routed_to == NAME
                and queries[eid].status in LIVE]
        guesses = labeler.assess(mine)
        sure = {eid: g.confidence for eid, g in guesses.items() if g is not None}
        confident = []
        if labeler.cfg.max_pending is not None:
            bar = labeler.cfg.withdraw_confidence
            confident = [q for q in mine if not waiting[q.example_id].started and q.example_id in sure
                         and sure[q.example_id] >= bar]
        delete_records(labeler, [waiting[eid].record for eid in answered + [q.example_id for q in confident]])
        if confident:
            withdraw({q.example_id: {"reason": "confident", "model_version": version,
                                     "confidence": round(sure[q.example_id], 3)} for q in confident})
        result.withdrawn = {k: v for k, v in (("answered", len(answered)), ("confident", len(confident))) if v}
        gone = {q.example_id for q in confident}
        keep = [q for q in mine if q.example_id not in gone]
        result.refreshed = labeler.log(keep, labeler.records)
        drop_stale_suggestions(labeler, keep, waiting)
    except ArgillaUnreachable as err:
        if strict:
            raise
        result.unreachable = err.summary
        log.warning("%s; the records waiting for reviewers keep their older suggestions until a later round",
                    err.summary)
        return result
    result.meta = model_meta(labeler.dataset_name, version)
    if result.withdrawn or result.refreshed:
        log.info("review queue: %d records refreshed with model v%s, withdrawn %s", result.refreshed, version,
                 result.withdrawn or "none")
    return result


# Talking to Argilla about what waits ------------------------------------------------------------------

def waiting_records(labeler: ArgillaLabeler) -> dict[str, Waiting]:
    """The dataset's records no annotator has completed, by example id."""
    rg = sdk()
    dataset = labeler.ensure_dataset()
    query = rg.Query(filter=rg.Filter([("status", "==", "pending")]))

    def fetch():
        out = {}
        for record in dataset.records(query=query, with_suggestions=True, with_responses=True):
            suggestion = next((x for x in record.suggestions if x.question_name == QUESTION), None)
            started = any(True for _ in record.responses)
            out[str(record.id)] = Waiting(started, None if suggestion is None else str(suggestion.id), record)
        return out

    return labeler.call("list records", fetch)


def delete_records(labeler: ArgillaLabeler, records: list) -> int:
    """Delete records fetched by waiting_records (the SDK deletes by the server's own record id): an Argilla
    action only; what it means for the queries is the caller's to store."""
    if records:
        labeler.call("withdraw", labeler.ensure_dataset().records.delete, list(records))
    return len(records)


def drop_stale_suggestions(labeler: ArgillaLabeler, queries: Sequence[Query], waiting: dict[str, Waiting]) -> int:
    """Logging a record keeps a suggestion it is not given: one whose guess fell below the pre-selection bar
    is deleted here (the SDK has no call for it; this is the server's REST endpoint for it)."""
    stale = [waiting[q.example_id].suggestion_id for q in queries
             if q.example_id in waiting and waiting[q.example_id].suggestion_id
             and labeler.pick(labeler.guesses.get(q.example_id), (q.meta or {}).get("llm") or {}) is None]
    http = labeler.client.http_client
    for sid in stale:
        labeler.call("delete suggestion", lambda s=sid: http.delete(f"/api/v1/suggestions/{s}").raise_for_status())
    return len(stale)
