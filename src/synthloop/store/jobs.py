"""Outside jobs (OpenAI Batch API jobs) in the jobs and job_queries tables, read and written inside a caller's
transaction: a job is written with its queries marked submitted (Store.mark_submitted) and its answers with
their labels and usage (Store.apply), so a kill between the two halves cannot happen."""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa

from synthloop.store.rows import Job, JobStatus
from synthloop.store.schema import job_queries, jobs


def write_jobs(conn: sa.Connection, new: Sequence[Job], keep_times: bool = False) -> None:
    """Insert each job not stored yet (kind, external id) with its queries; update the status, cost, error and
    detail of one that is. updated_at is now, unless keep_times (a job moved from an older store)."""
    now = time.time()
    for job in new:
        values = {"status": JobStatus(job.status).value, "cost": job.cost, "error": job.error, "detail": job.detail,
                  "updated_at": job.updated_at if keep_times else now}
        stored = conn.execute(sa.select(jobs.c.id).where(jobs.c.kind == job.kind,
                                                         jobs.c.external_id == job.external_id)).scalar()
        if stored is not None:
            conn.execute(jobs.update().where(jobs.c.id == stored).values(**values))
            continue
        key = conn.execute(jobs.insert().values(kind=job.kind, external_id=job.external_id, model=job.model,
                                                round=job.round, estimated_cost=job.estimated_cost,
                                                created_at=job.created_at or now, **values)).inserted_primary_key
        assert key is not None  # a single-row insert always has one
        if job.example_ids:
            conn.execute(job_queries.insert(), [{"job_id": key[0], "example_id": eid, "position": i}
                                                for i, eid in enumerate(dict.fromkeys(job.example_ids))])


def read_jobs(conn: sa.Connection, kind: str, statuses: Sequence[JobStatus] | None = None) -> dict[str, Job]:
    """A kind's jobs by external id, oldest first, with their queries in the order they were sent."""
    stmt = (sa.select(jobs, job_queries.c.example_id).outerjoin(job_queries, job_queries.c.job_id == jobs.c.id)
            .where(jobs.c.kind == kind).order_by(jobs.c.id, job_queries.c.position))
    if statuses is not None:
        stmt = stmt.where(jobs.c.status.in_([JobStatus(s).value for s in statuses]))
    parts: dict[str, list[sa.Row]] = {}  # external id -> its rows, one per query it covers
    for row in conn.execute(stmt):
        parts.setdefault(row.external_id, []).append(row)
    return {external_id: _job(rows) for external_id, rows in parts.items()}


def _job(rows: list[sa.Row]) -> Job:
    first = rows[0]
    return Job(kind=first.kind, external_id=first.external_id, status=JobStatus(first.status),
               example_ids=tuple(r.example_id for r in rows if r.example_id is not None), model=first.model,
               round=first.round, estimated_cost=first.estimated_cost, cost=first.cost, error=first.error,
               detail=first.detail or {}, created_at=first.created_at, updated_at=first.updated_at)
