"""Labels: written with what brings them, read as training rows, counts and the report's history."""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa

from synthloop.store.base import StoreBase
from synthloop.store.rows import ExampleLabel, LabelCount, LabelEvent, NewLabel, TrainingRow, source_rank
from synthloop.store.schema import examples, labels


class LabelMethods(StoreBase):
    """Store's labels part."""

    def _write_labels(self, conn, new: Sequence[NewLabel], round_: int | None) -> int:
        now = time.time()
        rows = [
            {"example_id": x.example_id, "label": x.label, "source": x.source, "confidence": x.confidence,
             "round": round_, "cost": x.cost, "meta": x.meta, "created_at": now}
            for x in new
        ]
        return self._insert_ignore(conn, labels, rows)

    def delete_label(self, example_id: str, source: str) -> int:
        """Remove one source's label of an example (`synthloop teach`'s undo); returns the rows removed."""
        with self.engine.begin() as conn:
            return conn.execute(labels.delete().where(labels.c.example_id == example_id,
                                                      labels.c.source == source)).rowcount

    def training_set(self) -> list[TrainingRow]:
        """(example_id, text, label, source) for every non-test example, one label each, best source wins."""
        stmt = (
            sa.select(examples.c.id, examples.c.text, labels.c.label, labels.c.source)
            .join(labels, labels.c.example_id == examples.c.id)
            .where(examples.c.split != "test")
            .order_by(examples.c.id, labels.c.id)
        )
        best: dict[str, TrainingRow] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                current = best.get(row.id)
                # Among sources of one rank the newest wins: a reviewer's re-check replaces the label it doubted.
                if current is None or source_rank(row.source) <= source_rank(current.source):
                    best[row.id] = TrainingRow(row.id, row.text, row.label, row.source)
        return list(best.values())

    def label_counts(self) -> list[LabelCount]:
        """(source, label, count) over all stored labels."""
        with self.engine.connect() as conn:
            stmt = sa.select(labels.c.source, labels.c.label, sa.func.count()).group_by(labels.c.source, labels.c.label)
            return [LabelCount(*r) for r in conn.execute(stmt)]

    def labeled_export(self) -> list[TrainingRow]:
        """The training set's real labels (synthetic texts left out): what `synthloop export` writes."""
        return [row for row in self.training_set() if row.real]

    def label_history(self) -> list[LabelEvent]:
        """Every stored label's source, class, round and time, in the order they were stored."""
        stmt = sa.select(labels.c.source, labels.c.label, labels.c.round, labels.c.created_at).order_by(labels.c.id)
        with self.engine.connect() as conn:
            return [LabelEvent(r.source, r.label, r.round, r.created_at) for r in conn.execute(stmt)]

    def example_labels(self) -> list[ExampleLabel]:
        """Every stored label (each source's, not only the best) with its example's text, by example then source."""
        stmt = (sa.select(labels.c.example_id, examples.c.text, labels.c.label, labels.c.source)
                .join(examples, examples.c.id == labels.c.example_id).order_by(labels.c.example_id, labels.c.source))
        with self.engine.connect() as conn:
            return [ExampleLabel(r.example_id, r.text, r.label, r.source) for r in conn.execute(stmt)]
