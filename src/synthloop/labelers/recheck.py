"""Second looks: the stored labels that the model's out-of-fold predictions doubt most (the report's label
quality check, cleanlab's ranking) go to a separate Argilla dataset, `<dataset>-recheck`, with the stored
label as the suggestion. What reviewers submit there is stored as `human:<username>`; among labels of the
same rank the newest wins, so a reviewer's correction replaces the label it re-checked.

This module talks to Argilla only; `synthloop.loop.review` picks the labels to re-check and stores the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from synthloop.labelers.argilla import ArgillaLabeler, PushResult
from synthloop.labelers.argilla_sdk import QUESTION, sdk
from synthloop.labelers.context import LabelContext
from synthloop.store import NewLabel

SUFFIX = "-recheck"


@dataclass
class Rechecked:
    """What reviewers submitted in the re-check dataset, resolved by majority (not stored yet)."""

    labels: list[NewLabel] = field(default_factory=list)
    ties: list[str] = field(default_factory=list)
    waiting: int = 0


def push(ctx: LabelContext, rows: list[dict], on_chunk: Callable[[int, int], None] | None = None) -> PushResult:
    """Send label-quality rows (report.label_quality's `suspicious`) as records, the stored label suggested."""
    rg = sdk()

    def to_records(chunk: list[dict]) -> list:
        return [rg.Record(
            id=row["id"],
            fields={"text": row["text"],
                    "hints": f"**Stored label:** {row['given']} ({row['source']})  \n"
                             f"**Model, out of fold:** {row['predicted']} "
                             f"(probability of the stored label {row['p_given']:.2f})"},
            metadata={"origin": "recheck", "strategy": "label-quality", "uncertainty": 1.0 - float(row["score"])},
            suggestions=[rg.Suggestion(question_name=QUESTION, value=row["given"], agent="stored-label")],
        ) for row in chunk]

    labeler = ArgillaLabeler(ctx, dataset_suffix=SUFFIX)
    pushed = labeler.log(rows, to_records, on_chunk=on_chunk)
    return PushResult(pushed, labeler.dataset_name, labeler.url)


def collect(ctx: LabelContext) -> Rechecked:
    labeler = ArgillaLabeler(ctx, dataset_suffix=SUFFIX)
    if labeler.existing_dataset() is None:
        return Rechecked()
    labels = labeler.resolve_all(labeler.responses())
    return Rechecked(labels, labeler.ties, labeler.waiting)
