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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from synthloop.store import QueryStatus

log = logging.getLogger("synthloop.argilla")

NAME = "argilla"
WITHDRAWN = QueryStatus.WITHDRAWN  # taken out of the review queue, its example stays out of the pool
LIVE = ("pending", "held")  # "held": a nightly run's leftover beyond --max-labels, pending again after the run


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
    record: object  # the SDK's record, which deletes by the server's own id


@dataclass(frozen=True)
class Pick:
    """A pre-selected suggestion."""

    value: str
    score: float | None
    agent: str


def preselect(guess: Guess | None, llm: dict, labels, min_confidence: float, llm_model: str) -> Pick | None:
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


def room(project, n: int, routed_to: str) -> int:
    """How many new queries a round may route to Argilla: all `n` without a cap, else what fits under
    `[argilla] max_pending` beside the queries already waiting (pushed or not)."""
    cap = project.config.argilla.max_pending
    if routed_to != NAME or cap is None:
        return n
    waiting = sum(len(project.store.queries(status=s, routed_to=NAME)) for s in LIVE)
    return max(0, min(n, cap - waiting))


def _model_key(dataset: str) -> str:
    return f"argilla:model:{dataset}"


def pushed_with(store, dataset: str) -> int | None:
    """The model version whose guesses the dataset's waiting records show; None before any push."""
    value = store.get_meta(_model_key(dataset))
    return None if value is None else value.get("version")


def remember_model(store, dataset: str, version: int | None) -> None:
    store.set_meta(_model_key(dataset), {"version": version})


@dataclass
class TendResult:
    refreshed: int = 0
    withdrawn: dict[str, int] = field(default_factory=dict)  # reason -> records taken out of the queue
    unreachable: str | None = None  # the error summary when Argilla did not answer


def tend(project, version: int, model, strict: bool = False) -> TendResult | None:
    """After a retrain: withdraw what is no longer worth a review, refresh what still waits. Nothing to do
    (None) when nothing was ever pushed or the waiting records already show this model's guesses. Argilla
    down: logged (raised when strict), and the next round or push tries again."""
    from synthloop.labelers.argilla import ArgillaLabeler, ArgillaUnreachable

    labeler = ArgillaLabeler(project)
    store = project.store
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
        if project.config.argilla.max_pending is not None:
            bar = project.config.argilla.withdraw_confidence
            confident = [q for q in mine if not waiting[q.example_id].started and q.example_id in sure
                         and sure[q.example_id] >= bar]
        delete_records(labeler, [waiting[eid].record for eid in answered + [q.example_id for q in confident]])
        if confident:
            store.withdraw({q.example_id: {"reason": "confident", "model_version": version,
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
    remember_model(store, labeler.dataset_name, version)
    if result.withdrawn or result.refreshed:
        log.info("review queue: %d records refreshed with model v%s, withdrawn %s", result.refreshed, version,
                 result.withdrawn or "none")
    return result


# Talking to Argilla about what waits ------------------------------------------------------------------

def waiting_records(labeler) -> dict[str, Waiting]:
    """The dataset's records no annotator has completed, by example id."""
    from synthloop.labelers.argilla import QUESTION, _sdk

    rg = _sdk()
    dataset = labeler.ensure_dataset()
    query = rg.Query(filter=rg.Filter([("status", "==", "pending")]))

    def fetch():
        out = {}
        for record in dataset.records(query=query, with_suggestions=True, with_responses=True):
            suggestion = next((x for x in record.suggestions if x.question_name == QUESTION), None)
            started = any(True for _ in record.responses)
            out[str(record.id)] = Waiting(started, None if suggestion is None else str(suggestion.id), record)
        return out

    return labeler._call("list records", fetch)


def delete_records(labeler, records: list) -> int:
    """Delete records fetched by waiting_records (the SDK deletes by the server's own record id)."""
    if records:
        labeler._call("withdraw", labeler.ensure_dataset().records.delete, list(records))
    return len(records)


def drop_stale_suggestions(labeler, queries, waiting: dict[str, Waiting]) -> int:
    """Logging a record keeps a suggestion it is not given: one whose guess fell below the pre-selection bar
    is deleted here (the SDK has no call for it; this is the server's REST endpoint for it)."""
    stale = [waiting[q.example_id].suggestion_id for q in queries
             if q.example_id in waiting and waiting[q.example_id].suggestion_id
             and labeler.pick(labeler._guesses.get(q.example_id), (q.meta or {}).get("llm") or {}) is None]
    http = labeler.client.http_client
    for sid in stale:
        labeler._call("delete suggestion", lambda s=sid: http.delete(f"/api/v1/suggestions/{s}").raise_for_status())
    return len(stale)
