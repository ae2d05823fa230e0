"""The round: collect labels that arrived -> train -> evaluate -> top up -> score the pool -> select -> route.

Each step reads and writes the store, so a run stopped anywhere resumes where it stopped (`checkpoint` marks
the step boundaries the kill tests stop at). `Project.round` is the public façade over `run_round`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from synthloop.checkpoint import checkpoint
from synthloop.config import Config
from synthloop.errors import SynthloopError
from synthloop.labelers import get_labeler
from synthloop.labelers.context import LabelContext
from synthloop.learn import active
from synthloop.store import Query, QueryStatus, RoundRow, Store

if TYPE_CHECKING:
    from synthloop.learn.models import TextClassifier
    from synthloop.learn.selection import Scorer

log = logging.getLogger("synthloop")


class Project(Protocol):
    """What a round asks of the project (synthloop.loop.project.Project is the one that has it all)."""

    store: Store
    config: Config

    def label_context(self) -> LabelContext: ...
    def train(self, round_: int | None = None) -> tuple[int, TextClassifier]: ...
    def evaluate(self, model: TextClassifier) -> dict | None: ...
    def monitor(self, round_: int, model: TextClassifier) -> dict: ...
    def select(self, round_: int, model: TextClassifier, n: int | None = None, strategy: str | None = None,
               labeler: str | None = None, *, scorer: Scorer | None = None) -> int: ...
    def scorer(self, round_: int, incremental: bool = False, engine: str | None = None,
               address: str | None = None) -> Scorer: ...
    def load_model(self, version: int | None = None) -> tuple[int, TextClassifier]: ...
    def training_changed(self) -> bool: ...
    def n_real_labels(self) -> int: ...
    def last_metrics(self) -> dict | None: ...


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


def check_choices(config: Config, strategy: str | None = None, labeler: str | None = None) -> None:
    """Refuse an unknown model, strategy or labeler (the config's, or the ones given) before anything is
    stored: a typo must not leave queries routed to a labeler that does not exist."""
    from synthloop.labelers import LABELERS
    from synthloop.learn.models import MODEL_NAMES

    if config.model.name not in MODEL_NAMES:
        raise SynthloopError(f"unknown model {config.model.name!r}; choose one of {', '.join(MODEL_NAMES)} "
                             "([model] name in synthloop.toml, or --model)")
    active.get_strategy(strategy or config.loop.strategy)
    for name in {labeler or config.loop.labeler, config.loop.labeler}:
        if name not in LABELERS:
            raise SynthloopError(f"unknown labeler {name!r}; choose one of {', '.join(LABELERS)} "
                                 "([loop] labeler in synthloop.toml, or --labeler)")


def run_round(project: Project, query: bool = True, n: int | None = None, strategy: str | None = None,
              route: bool = True, labeler: str | None = None, incremental: bool = False, retrain: bool = True,
              engine: str | None = None, address: str | None = None, scorer: Scorer | None = None) -> RoundResult:
    store = project.store
    ctx = project.label_context()  # one for the whole round: its labelers share the LLM client and the budget
    check_choices(project.config, strategy, labeler)
    scorer_for = (lambda number: scorer) if scorer is not None else (
        lambda number: project.scorer(number, incremental, engine, address))
    if scorer is None and engine is not None:
        scorer_for(0).check(strategy or project.config.loop.strategy)  # a strategy that cannot be streamed
    start = time.perf_counter()
    number, resumed = store.open_round()
    info = _row(store, number)
    timings = dict(info.timings or {})

    t = time.perf_counter()
    collected = collect(ctx, number)
    timings["collect"] = time.perf_counter() - t
    checkpoint("collected", number)

    if info.model_version is None and not retrain and not project.training_changed():
        last = store.latest_model()
        assert last is not None  # training_changed() is False only when there is a model
        store.update_round(number, model_version=last.version, metrics=project.last_metrics())
        info = _row(store, number)
    if info.model_version is None:
        t = time.perf_counter()
        version, model = project.train(number)
        timings["train"] = time.perf_counter() - t
        checkpoint("model-stored", number)
    else:
        version, model = project.load_model(info.model_version)
    if not info.metrics:  # also a resumed round whose run was killed between storing the model and scoring it
        t = time.perf_counter()
        metrics = project.evaluate(model)
        metrics = {"n_labels": project.n_real_labels(), **(metrics or {}), **project.monitor(number, model)}
        timings["evaluate"] = time.perf_counter() - t
        store.update_round(number, metrics=metrics, timings=timings)
    checkpoint("trained", number)

    if project.config.synth.topup:
        t = time.perf_counter()
        from synthloop.synth import topup

        topup(ctx, number)
        added = store.synthetic_added(number)
        if added:
            counts = dict(_row(store, number).counts or {})
            store.update_round(number, counts={**counts, "synthetic_added": dict(sorted(added.items()))})
        timings["topup"] = time.perf_counter() - t
    checkpoint("augmented", number)
    from synthloop.loop.review import tend

    tend(ctx, version, model)  # what waits for reviewers gets this model's guesses

    if query and not store.queries(round_=number):
        t = time.perf_counter()
        project.select(number, model, n=n, strategy=strategy, labeler=labeler, scorer=scorer_for(number))
        timings["select"] = time.perf_counter() - t
    checkpoint("selected", number)
    if not route:
        store.update_round(number, timings=timings)
        return _result(project, number, resumed, version, collected, start)

    t = time.perf_counter()
    collected += route_round(ctx, number)
    timings["route"] = time.perf_counter() - t
    checkpoint("routed", number)
    close_round(project, number, timings, collected)
    return _result(project, number, resumed, version, collected, start)


def collect(ctx: LabelContext, round_: int | None = None) -> int:
    """Store what every labeler with submitted queries has ready (labels, skipped and failed queries, hand-offs
    to another labeler), each labeler's outcomes in one transaction; never waits for more. A labeler whose
    server is unreachable (Argilla down) is skipped with a warning: the loop never blocks on humans, and
    what they submitted is collected by a later round. Queries handed off (the hybrid labeler's doubtful
    ones) go out to their new labeler at once."""
    store = ctx.store
    pending = {q.routed_to for q in store.queries(status=QueryStatus.PENDING, submitted=True)}
    added, handed_to = 0, set()
    for name in sorted(pending):
        labeler = get_labeler(name, ctx)
        try:
            collected = labeler.collect()
        except labeler.defers_on as err:
            log.warning("%s; its labels wait for a later round or `synthloop review pull`", getattr(err, "summary", err))
            continue
        added += store.apply(collected, round_)
        handed_to |= {to for to, _ in collected.handoff.values()}
    if handed_to:
        hand_out_all(ctx, [q for q in store.queries(status=QueryStatus.PENDING, submitted=False)
                           if q.routed_to in handed_to])
    return added


def route_round(ctx: LabelContext, round_: int) -> int:
    """Hand this round's pending queries to their labeler, with what earlier rounds could not hand out (a
    server down then; a night whose --max-labels the leftovers filled selects nothing new), then take
    whatever the labelers have ready."""
    store = ctx.store
    pending = store.queries(status=QueryStatus.PENDING, round_=round_)
    ids = {q.example_id for q in pending}
    pending += [q for q in store.queries(status=QueryStatus.PENDING, submitted=False) if q.example_id not in ids]
    hand_out_all(ctx, pending)
    return collect(ctx, round_)


def hand_out_all(ctx: LabelContext, pending: Sequence[Query]) -> None:
    for name in sorted({q.routed_to for q in pending}):
        hand_out(ctx, name, [q for q in pending if q.routed_to == name])


def hand_out(ctx: LabelContext, name: str, queries: Sequence[Query]) -> None:
    """Submit queries to one labeler and mark what it took (with what it left to remember: a Batch job, the model
    an Argilla push showed) as submitted, in one transaction."""
    labeler = get_labeler(name, ctx)
    try:
        submitted = labeler.submit(queries)
    except labeler.defers_on as err:
        log.warning("%s; %d queries stay pending and go out with the next round or `synthloop review push`",
                    getattr(err, "summary", err),
                    len(ctx.store.queries(status=QueryStatus.PENDING, routed_to=name, submitted=False)))
        return
    ctx.store.mark_submitted(submitted.ids, submitted.meta, submitted.jobs)


def close_round(project: Project, number: int, timings: dict, collected: int) -> None:
    """Mark a round done, with its counts: its queries are out, and the next round trains on what came back."""
    store = project.store
    info = _row(store, number)
    counts = {**(info.counts or {}), "queried": len(store.queries(round_=number)),
              "labels_collected": collected,
              "labels_total": project.n_real_labels()}
    store.update_round(number, status="done", finished_at=time.time(), timings=timings, counts=counts)


def _result(project: Project, number: int, resumed: bool, version: int, collected: int, start: float) -> RoundResult:
    info = _row(project.store, number)
    return RoundResult(number, resumed, version, (info.metrics or {}).get("n_labels", 0), info.metrics,
                       len(project.store.queries(round_=number)), collected, time.perf_counter() - start)


def _row(store: Store, number: int) -> RoundRow:
    """A round's stored row: it exists from `open_round` on, so a missing one is a bug, not a user error."""
    info = store.round(number)
    if info is None:
        raise RuntimeError(f"round {number} is not in the store")
    return info
