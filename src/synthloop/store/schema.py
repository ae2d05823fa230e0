"""The store's tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL.

SCHEMA_VERSION counts the changes a store made by an older synthloop is migrated through when it is opened
(see base.StoreBase._migrate).
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION = 6  # 2: queries.meta; 3: cached scores on the measure registry's scale; 4: queries.reason;
# 5: models.metrics; 6: the jobs tables (Batch jobs were meta entries)

metadata = sa.MetaData()

# Byte order for ids on PostgreSQL too (SQLite's own): a locale collation would order the stop set, the pool's
# chunks and ties differently from SQLite, and from one server's locale to another's.
ID = sa.String().with_variant(sa.String(collation="C"), "postgresql")

examples = sa.Table(
    "examples", metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("origin", sa.String, nullable=False),  # pool | synthetic | import
    sa.Column("split", sa.String, nullable=False),  # pool | test
    sa.Column("gold", sa.String),  # hidden truth: the oracle answers from it; the test split is scored on it
    sa.Column("meta", sa.JSON),
    sa.Column("created_at", sa.Float, nullable=False),
)
sa.Index("ix_examples_split", examples.c.split, examples.c.origin)
# unlabeled_pool_chunks pages by (split, id > last): with this index each page is a range scan.
ix_examples_split_id = sa.Index("ix_examples_split_id", examples.c.split, examples.c.id)

labels = sa.Table(
    "labels", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("example_id", sa.String, sa.ForeignKey("examples.id"), nullable=False),
    sa.Column("label", sa.String, nullable=False),
    sa.Column("source", sa.String, nullable=False),  # oracle | import | synthetic | llm:<model> | human:<user>
    sa.Column("confidence", sa.Float),
    sa.Column("round", sa.Integer),
    sa.Column("cost", sa.Float, nullable=False, default=0.0),
    sa.Column("meta", sa.JSON),  # e.g. where an LLM's confidence came from
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("example_id", "source"),
)

queries = sa.Table(
    "queries", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("example_id", sa.String, sa.ForeignKey("examples.id"), nullable=False, unique=True),
    sa.Column("strategy", sa.String, nullable=False),
    sa.Column("score", sa.Float),
    sa.Column("routed_to", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),  # a QueryStatus
    sa.Column("reason", sa.String),  # why a query was skipped or failed
    sa.Column("submitted_at", sa.Float),  # when it was handed to its labeler; pending until labels come back
    sa.Column("meta", sa.JSON),  # e.g. the LLM's answer when the router sent the example on to humans
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
sa.Index("ix_queries_status", queries.c.status, queries.c.routed_to)

rounds = sa.Table(
    "rounds", metadata,
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String, nullable=False),  # open | done
    sa.Column("model_version", sa.Integer),
    sa.Column("metrics", sa.JSON),
    sa.Column("counts", sa.JSON),
    sa.Column("cost", sa.Float, nullable=False, default=0.0),
    sa.Column("timings", sa.JSON),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
)

models = sa.Table(
    "models", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("round", sa.Integer),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("path", sa.String, nullable=False),
    sa.Column("n_train", sa.Integer, nullable=False),
    sa.Column("metrics", sa.JSON),  # of a model trained outside a round (the loop's last labels); a round keeps its own
    sa.Column("created_at", sa.Float, nullable=False),
)

llm_calls = sa.Table(
    "llm_calls", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("purpose", sa.String, nullable=False),  # generate | label | filter
    sa.Column("model", sa.String, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("completion_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cost", sa.Float, nullable=False, default=0.0),
    sa.Column("latency", sa.Float, nullable=False, default=0.0),
    sa.Column("cached", sa.Boolean, nullable=False, default=False),
    sa.Column("ok", sa.Boolean, nullable=False, default=True),
    sa.Column("round", sa.Integer),
    sa.Column("created_at", sa.Float, nullable=False),
)

llm_cache = sa.Table(
    "llm_cache", metadata,
    sa.Column("key", sa.String, primary_key=True),  # sha256 of (model, messages, params, schema)
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

pool_files = sa.Table(
    "pool_files", metadata,
    sa.Column("path", sa.String, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),  # bytes: PostgreSQL's INTEGER stops at 2 GiB
    sa.Column("mtime", sa.Float, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("added", sa.Integer, nullable=False),
    sa.Column("imported_at", sa.Float, nullable=False),
)

scores = sa.Table(
    "scores", metadata,
    sa.Column("example_id", sa.String, primary_key=True),
    sa.Column("model_version", sa.Integer, primary_key=True),
    sa.Column("strategy", sa.String, primary_key=True),
    sa.Column("uncertainty", sa.Float, nullable=False),  # higher = less sure
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),  # running | done | failed
    sa.Column("summary", sa.JSON),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
)

# Model files, kept in the store only when it is shared (PostgreSQL): a machine resuming or monitoring a round
# another machine trained finds the model here, not in its own project folder.
files = sa.Table(
    "files", metadata,
    sa.Column("name", sa.String, primary_key=True),  # the path relative to the project folder
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

meta = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.JSON),
)


# Work handed to an outside service that answers later (an OpenAI Batch API job), one row per job, written with
# its queries marked submitted, so a run killed after submitting never submits them again.
jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String, nullable=False),  # the labeler that made it: llm-batch
    sa.Column("external_id", sa.String, nullable=False),  # the service's id of it (the batch id)
    sa.Column("status", sa.String, nullable=False),  # a JobStatus
    sa.Column("model", sa.String),
    sa.Column("round", sa.Integer),  # the round it was submitted in
    sa.Column("estimated_cost", sa.Float, nullable=False, default=0.0),  # committed against the budget at submit
    sa.Column("cost", sa.Float),  # what its answers cost, once they are recorded
    sa.Column("error", sa.String),  # why it ended without answers (lost)
    sa.Column("detail", sa.JSON),  # the service's own status and when each step happened
    sa.Column("created_at", sa.Float, nullable=False),  # when it was submitted
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("kind", "external_id"),
)
sa.Index("ix_jobs_status", jobs.c.kind, jobs.c.status)

# The queries a job covers, by their example (one query per example), in the order they were sent.
job_queries = sa.Table(
    "job_queries", metadata,
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("example_id", ID, primary_key=True),  # no foreign key: a job moved from an old store opens whatever it names
    sa.Column("position", sa.Integer, nullable=False),
)
