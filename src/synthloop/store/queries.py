"""The query lifecycle: every change of a query's status is one of these methods, in one transaction with
what it brings (labels, reasons, the Batch jobs that cover it, the LLM usage that answered it)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from synthloop.store.jobs import read_jobs, write_jobs
from synthloop.store.labels import LabelMethods
from synthloop.store.rows import Collected, Job, JobStatus, NewLabel, Query, QueryStatus, in_chunks
from synthloop.store.schema import examples, llm_calls, queries


class QueryMethods(LabelMethods):
    """Store's query lifecycle part: every change of a query's status is one of these methods."""

    def add_queries(self, round_: int, picks: Sequence[tuple[str, float | None]], strategy: str, routed_to: str) -> int:
        now = time.time()
        rows = [
            {"round": round_, "example_id": eid, "strategy": strategy, "score": score, "routed_to": routed_to,
             "status": QueryStatus.PENDING.value, "created_at": now, "updated_at": now}
            for eid, score in picks
        ]
        with self.engine.begin() as conn:
            return self._insert_ignore(conn, queries, rows)

    def queries(self, status: str | None = None, routed_to: str | None = None, round_: int | None = None,
                submitted: bool | None = None) -> list[Query]:
        stmt = sa.select(queries, examples.c.text).join(examples, examples.c.id == queries.c.example_id)
        if submitted is not None:
            stmt = stmt.where(queries.c.submitted_at.is_not(None) if submitted else queries.c.submitted_at.is_(None))
        if status:
            stmt = stmt.where(queries.c.status == QueryStatus(status).value)
        if routed_to:
            stmt = stmt.where(queries.c.routed_to == routed_to)
        if round_ is not None:
            stmt = stmt.where(queries.c.round == round_)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(queries.c.id)).all()
        return [Query(r.id, r.round, r.example_id, r.text, r.strategy, r.score, r.routed_to, r.status, r.submitted_at,
                      r.meta, r.reason) for r in rows]

    @staticmethod
    def _update_queries(conn, example_ids: Iterable[str], only: QueryStatus | None = None, **values) -> int:
        changed = 0
        for chunk in in_chunks(example_ids):
            stmt = queries.update().where(queries.c.example_id.in_(chunk))
            if only is not None:
                stmt = stmt.where(queries.c.status == only.value)
            changed += conn.execute(stmt.values(updated_at=time.time(), **values)).rowcount
        return changed

    @staticmethod
    def _merge_query_meta(conn, values: dict[str, dict], **columns) -> None:
        if not values:
            return
        for chunk in in_chunks(values):
            rows = conn.execute(sa.select(queries.c.example_id, queries.c.meta).where(queries.c.example_id.in_(chunk)))
            for row in rows.all():
                conn.execute(queries.update().where(queries.c.example_id == row.example_id)
                             .values(meta={**(row.meta or {}), **values[row.example_id]}, updated_at=time.time(),
                                     **columns))

    def apply(self, collected: Collected, round_: int | None) -> int:
        """A labeler's outcomes in one transaction: its labels stored and their queries labeled, skipped and
        failed queries with their reasons, retries kept pending with what they carry, hand-offs rerouted, and
        the facts (a Batch job's state, its usage) that came with them. Returns the labels added."""
        pending = QueryStatus.PENDING
        with self.engine.begin() as conn:
            added = self._write_labels(conn, collected.labels, round_)
            self._update_queries(conn, {x.example_id for x in collected.labels}, only=pending,
                                 status=QueryStatus.LABELED.value, reason=None)
            for status, reasons in ((QueryStatus.SKIPPED, collected.skipped), (QueryStatus.FAILED, collected.failed)):
                for reason in set(reasons.values()):
                    self._update_queries(conn, [eid for eid, r in reasons.items() if r == reason], only=pending,
                                         status=status.value, reason=reason)
            self._merge_query_meta(conn, collected.retry)
            for labeler in {to for to, _ in collected.handoff.values()}:
                mine = {eid: meta for eid, (to, meta) in collected.handoff.items() if to == labeler}
                self._merge_query_meta(conn, mine)
                self._update_queries(conn, mine, only=pending, routed_to=labeler, submitted_at=None)
            if collected.llm_calls:
                conn.execute(llm_calls.insert(), [{"created_at": time.time(), **c} for c in collected.llm_calls])
            for key, value in collected.meta.items():
                self._upsert_meta(conn, key, value)
            write_jobs(conn, collected.jobs)
        return added

    def mark_submitted(self, example_ids: Sequence[str], meta_values: dict | None = None, jobs: Sequence[Job] = ()) -> None:
        """Queries handed to their labeler, with what the hand-out left to remember (facts, the Batch jobs they
        went out in), at once."""
        with self.engine.begin() as conn:
            self._update_queries(conn, example_ids, submitted_at=time.time())
            for key, value in (meta_values or {}).items():
                self._upsert_meta(conn, key, value)
            write_jobs(conn, jobs)

    def jobs(self, kind: str, statuses: Sequence[JobStatus] | None = None) -> dict[str, Job]:
        """A labeler's outside jobs (in these statuses; all if None) by external id, oldest first."""
        with self.engine.connect() as conn:
            return read_jobs(conn, kind, statuses)

    def reroute(self, example_ids: Sequence[str], routed_to: str) -> None:
        """Pending queries to another labeler; they go out again from there."""
        with self.engine.begin() as conn:
            self._update_queries(conn, example_ids, only=QueryStatus.PENDING, routed_to=routed_to, submitted_at=None)

    def hold(self, example_ids: Sequence[str]) -> None:
        with self.engine.begin() as conn:
            self._update_queries(conn, example_ids, only=QueryStatus.PENDING, status=QueryStatus.HELD.value)

    def withdraw(self, reasons: dict[str, dict]) -> None:
        """Pending (or held) queries taken out of the review queue, each with why ({example_id: meta}), at once."""
        with self.engine.begin() as conn:
            self._merge_query_meta(conn, {eid: {"withdrawn": why} for eid, why in reasons.items()})
            for status in (QueryStatus.PENDING, QueryStatus.HELD):
                self._update_queries(conn, reasons, only=status, status=QueryStatus.WITHDRAWN.value)

    def release_held(self) -> list[str]:
        held = [q.example_id for q in self.queries(status=QueryStatus.HELD)]
        with self.engine.begin() as conn:
            self._update_queries(conn, held, only=QueryStatus.HELD, status=QueryStatus.PENDING.value)
        return held

    def requeue(self, statuses: Sequence[QueryStatus]) -> dict[str, int]:
        """Forget the queries in these statuses, so that their examples are selectable again; returns how
        many per reason. Their labels (none: a skipped or failed query has none) are untouched."""
        values = [QueryStatus(s).value for s in statuses]
        if not values:
            return {}
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(queries.c.status, queries.c.reason, sa.func.count())
                                .where(queries.c.status.in_(values)).group_by(queries.c.status, queries.c.reason)).all()
            conn.execute(queries.delete().where(queries.c.status.in_(values)))
        return {f"{status}: {reason or 'no reason stored'}": n for status, reason, n in rows}

    def set_query_meta(self, values: dict[str, dict]) -> None:
        """Merge extra facts into queries' meta, e.g. {example_id: {"llm": {...}}}, in one transaction."""
        with self.engine.begin() as conn:
            self._merge_query_meta(conn, values)

    def query_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(queries.c.status, sa.func.count()).group_by(queries.c.status)).all())

    def query_reasons(self) -> dict[str, dict[str, int]]:
        """status -> reason -> count, for the skipped and failed queries."""
        stmt = (sa.select(queries.c.status, queries.c.reason, sa.func.count())
                .where(queries.c.status.in_([QueryStatus.SKIPPED.value, QueryStatus.FAILED.value]))
                .group_by(queries.c.status, queries.c.reason).order_by(queries.c.status, queries.c.reason))
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for status, reason, n in conn.execute(stmt):
                out.setdefault(status, {})[reason or "no reason stored"] = n
        return out

    def record_labels(self, new: Sequence[NewLabel], round_: int | None) -> int:
        """Store labels and mark their queries labeled, atomically; a label already stored is not added twice."""
        return self.apply(Collected(labels=list(new)), round_)
