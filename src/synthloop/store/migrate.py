"""Bringing a store made by an older synthloop up to SCHEMA_VERSION, inside the transaction that opens it
(under the schema lock, so two machines opening one old PostgreSQL store migrate it once)."""

from __future__ import annotations

import sqlalchemy as sa

from synthloop.store.jobs import write_jobs
from synthloop.store.rows import Job, JobStatus
from synthloop.store.schema import ix_examples_split_id, meta, scores

BATCH_JOB_PREFIX = "llm-batch:job:"  # before schema 6, meta held each Batch job under this key + its batch id


def migrate(conn: sa.Connection) -> None:
    # create_all adds missing tables but never columns; stores made by schema 1 lack queries.meta.
    ix_examples_split_id.create(conn, checkfirst=True)  # create_all adds no index to an existing table
    inspector = sa.inspect(conn)
    for table, name, kind in (("queries", "meta", "JSON"), ("queries", "reason", "VARCHAR"), ("models", "metrics", "JSON")):
        if name not in {c["name"] for c in inspector.get_columns(table)}:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))
    stored = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    if stored is not None and stored < 3:
        # Scores cached before schema 3 are on another scale (margin as p1 - p2): a cache, so recompute.
        conn.execute(scores.delete())
    move_meta_jobs(conn)


def job_from_meta(external_id: str, value: dict) -> Job:
    """A Batch job as schema 5 kept it (a JSON dict in meta) as a jobs row."""
    known = {"state", "ids", "model", "round", "estimated_cost", "cost", "submitted_at"}
    submitted = float(value.get("submitted_at") or 0.0)
    steps = [float(value[k]) for k in ("answered_at", "done_at", "lost_at") if value.get(k)]
    status = JobStatus(value.get("state", JobStatus.OPEN.value))
    return Job(kind="llm-batch", external_id=external_id, status=status, example_ids=tuple(value.get("ids") or ()),
               model=value.get("model"), round=value.get("round"), estimated_cost=float(value.get("estimated_cost") or 0.0),
               cost=value.get("cost"), error="unknown to the Batch API" if status is JobStatus.LOST else None,
               detail={k: v for k, v in value.items() if k not in known}, created_at=submitted,
               updated_at=max([submitted, *steps]))


def move_meta_jobs(conn: sa.Connection) -> None:
    """Batch jobs stored as meta entries (schema 5 and before) become jobs rows; their meta entries go."""
    key_is_job = meta.c.key.startswith(BATCH_JOB_PREFIX, autoescape=True)
    rows = conn.execute(sa.select(meta.c.key, meta.c.value).where(key_is_job).order_by(meta.c.key)).all()
    if not rows:
        return
    # Ordered by when each was submitted, as the jobs table's ids order jobs.
    found = sorted((job_from_meta(r.key[len(BATCH_JOB_PREFIX):], r.value) for r in rows), key=lambda j: j.created_at)
    write_jobs(conn, found, keep_times=True)
    conn.execute(meta.delete().where(key_is_job))
