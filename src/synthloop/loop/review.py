"""The review commands' Python API (`synthloop review push|pull|status`): what a round does with the `argilla`
labeler, on demand. The labelers talk to Argilla and return what happened; this module stores it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from synthloop.errors import SynthloopError
from synthloop.labelers import argilla_queue, recheck
from synthloop.labelers.argilla import ArgillaLabeler, PullResult, PushResult
from synthloop.labelers.base import Submitted
from synthloop.labelers.context import LabelContext
from synthloop.store import Collected, QueryStatus

if TYPE_CHECKING:
    from synthloop.learn.models import TextClassifier


class Project(Protocol):
    """What these commands use of a project (synthloop.loop.project.Project has both)."""

    def label_context(self) -> LabelContext: ...

    def new_model(self) -> TextClassifier: ...


def tend(ctx: LabelContext, version: int, model: TextClassifier,
         strict: bool = False) -> argilla_queue.TendResult | None:
    """Bring the records waiting for reviewers up to this model (argilla_queue.tend) and store what that
    changed: withdrawn queries at once, then the model the records show."""
    result = argilla_queue.tend(ArgillaLabeler(ctx), version, model, withdraw=ctx.store.withdraw, strict=strict)
    if result is not None and result.meta:
        ctx.store.apply(Collected(meta=result.meta), ctx.store.current_round())
    return result


def push(project: Project, reroute: bool = False, on_chunk: Callable[[int, int], None] | None = None) -> PushResult:
    """Push every pending query routed to Argilla (or, with reroute, every pending query)."""
    ctx = project.label_context()
    labeler = ArgillaLabeler(ctx)
    store = ctx.store
    if reroute:
        store.reroute([q.example_id for q in store.queries(status=QueryStatus.PENDING)], labeler.name)
    if store.latest_model() is not None:  # waiting records a newer model has not refreshed yet: refreshed first
        version, model = ctx.load_model(None)
        tend(ctx, version, model, strict=True)
        labeler.use_model(model)
    pending = store.queries(status=QueryStatus.PENDING, routed_to=labeler.name)
    # Each chunk is marked submitted once Argilla took it, so a push that fails midway keeps what went out.
    pushed = labeler.submit(pending, on_chunk=on_chunk, on_pushed=store.mark_submitted) if pending else Submitted()
    if pushed.meta:  # the model whose guesses the records show (argilla_queue.pushed_with)
        store.apply(Collected(meta=pushed.meta), store.current_round())
    return PushResult(len(pushed.ids), labeler.dataset_name, labeler.url)


def pull(project: Project, rechecks: bool = True) -> PullResult:
    """Labels for pending queries, plus (with rechecks) the answers in the `-recheck` dataset."""
    ctx = project.label_context()
    labeler = ArgillaLabeler(ctx)
    collected = labeler.collect()
    added = ctx.store.apply(collected, ctx.store.current_round())
    result = PullResult(added, len({x.example_id for x in collected.labels}), labeler.ties, labeler.waiting)
    if rechecks:
        result.rechecked = pull_rechecked(project).added
    return result


def status(project: Project) -> dict:
    ctx = project.label_context()
    waiting = len(ctx.store.queries(status=QueryStatus.PENDING, routed_to=ArgillaLabeler.name))
    return {**ArgillaLabeler(ctx).progress(), "pending_in_store": waiting}


def push_suspicious(project: Project, n: int = 20,
                    on_chunk: Callable[[int, int], None] | None = None) -> PushResult:
    """The n stored labels the model doubts most, to the `-recheck` dataset (synthloop.labelers.recheck)."""
    from synthloop.report.project_report import label_quality

    ctx = project.label_context()
    if ctx.store.latest_model() is None:
        raise SynthloopError("no model yet: run `synthloop train` or a round first")
    _, model = ctx.load_model(None)
    quality = label_quality(ctx.store, ctx.config, project.new_model, model)
    rows = quality["suspicious"][:n]
    if not rows:
        raise SynthloopError(quality.get("note") or "no real labels to re-check yet")
    return recheck.push(ctx, rows, on_chunk=on_chunk)


def pull_rechecked(project: Project) -> PullResult:
    ctx = project.label_context()
    found = recheck.collect(ctx)
    added = ctx.store.record_labels(found.labels, ctx.store.current_round())
    return PullResult(added, len({x.example_id for x in found.labels}), found.ties, found.waiting)
