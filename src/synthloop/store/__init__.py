"""The store: examples, labels, queries, rounds, model versions, LLM spending and outside jobs, in SQLite
(default) or PostgreSQL. Only this package speaks SQL; everything else calls `Store` and gets typed rows.

One module per concept, each a part of `Store`:
    base       opening, migrating (migrate), meta facts, the shared store's writer lock, shared files
    examples   examples, the unlabeled pool, the test set
    labels     labels as training rows, counts and history
    queries    the query lifecycle (every status change) and the Batch jobs covering queries (jobs)
    spending   LLM usage and the response cache
    rounds     rounds, model versions, nightly runs, cached scores
    schema     the tables; rows: the typed rows; url: which database
"""

from __future__ import annotations

from synthloop.store.base import WRITER_LOCK_WAIT, StoreBase
from synthloop.store.examples import ExampleMethods
from synthloop.store.queries import QueryMethods
from synthloop.store.rounds import RoundMethods
from synthloop.store.rows import (
    IN_CHUNK,
    SOURCE_PRIORITY,
    Collected,
    ExampleLabel,
    Job,
    JobStatus,
    LabelCount,
    LabelEvent,
    LLMUsage,
    ModelRow,
    NewLabel,
    PoolFileRow,
    Query,
    QueryStatus,
    RoundRow,
    RoundUsage,
    RunRow,
    TrainingRow,
    as_dicts,
    in_chunks,
    source_rank,
)
from synthloop.store.schema import (
    SCHEMA_VERSION,
    examples,
    files,
    job_queries,
    jobs,
    labels,
    llm_cache,
    llm_calls,
    meta,
    metadata,
    models,
    pool_files,
    queries,
    rounds,
    runs,
    scores,
)
from synthloop.store.spending import SpendingMethods


class Store(QueryMethods, ExampleMethods, SpendingMethods, RoundMethods, StoreBase):
    """The project's store; `Store.for_project(root)` opens the one a project's settings name."""


__all__ = [
    "IN_CHUNK", "SCHEMA_VERSION", "SOURCE_PRIORITY", "WRITER_LOCK_WAIT", "Collected", "ExampleLabel", "Job", "JobStatus",
    "LLMUsage", "LabelCount", "LabelEvent", "ModelRow", "NewLabel", "PoolFileRow", "Query", "QueryStatus", "RoundRow",
    "RoundUsage", "RunRow", "Store", "TrainingRow", "as_dicts", "examples", "files", "in_chunks", "job_queries", "jobs",
    "labels", "llm_cache", "llm_calls", "meta", "metadata", "models", "pool_files", "queries", "rounds", "runs", "scores",
    "source_rank",
]
