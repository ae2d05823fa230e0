"""The store: examples, labels, queries, rounds and model versions, in SQLite (default) or PostgreSQL.

Every write is one transaction, so a process killed at any point leaves the store as it was
before the write or after it, never in between; the loop resumes from what is stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from synthloop.store import url as store_url

SCHEMA_VERSION = 5  # 2: queries.meta; 3: cached scores on the measure registry's scale; 4: queries.reason;
# 5: models.metrics
WRITER_LOCK_WAIT = 3600.0  # seconds a round waits for another machine's round on a shared store

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

# A human's word beats an imported label, which beats the simulated oracle, an LLM, then synthetic text.
SOURCE_PRIORITY = {"human": 0, "import": 1, "oracle": 2, "llm": 3, "synthetic": 4}


def source_rank(source: str) -> int:
    return SOURCE_PRIORITY.get(source.split(":", 1)[0], 5)


class QueryStatus(str, Enum):  # noqa: UP042 - StrEnum would change str()/format() of a member, which callers may print
    """Where a query stands. Every change of it is a Store method below, in one transaction with what it brings."""

    PENDING = "pending"  # selected; with its labeler (submitted_at set) or waiting to go out
    LABELED = "labeled"  # its label is stored
    SKIPPED = "skipped"  # the labeler declined (abstained, no gold): the reason says why
    FAILED = "failed"  # the labeler could not answer: the reason says why; `synthloop requeue` retries
    HELD = "held"  # held back by a running nightly job (keeps it within --max-labels); pending again after
    WITHDRAWN = "withdrawn"  # taken out of the review queue (now confident): its example stays out of the pool


@dataclass(frozen=True)
class Query:
    id: int
    round: int
    example_id: str
    text: str
    strategy: str
    score: float | None
    routed_to: str
    status: str
    submitted_at: float | None = None
    meta: dict | None = None
    reason: str | None = None


class TrainingRow(NamedTuple):
    """One labeled example as training sees it (a tuple too, for code that unpacks it)."""

    example_id: str
    text: str
    label: str
    source: str

    @property
    def real(self) -> bool:
        """A label from a person, an import, the oracle or an LLM: not synthetic text."""
        return source_rank(self.source) < source_rank("synthetic")


class LabelCount(NamedTuple):
    source: str
    label: str
    n: int


@dataclass(frozen=True)
class NewLabel:
    example_id: str
    label: str
    source: str
    confidence: float | None = None
    cost: float = 0.0
    meta: dict | None = None


def _without_nul(row: dict) -> dict:
    """PostgreSQL's text cannot hold NUL (SQLite's can): it becomes U+FFFD, as a decoder marks a bad byte."""
    if not any(isinstance(v, str) and "\x00" in v for v in row.values()):
        return row
    return {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in row.items()}


@dataclass
class Collected:
    """What a labeler's collect() found, applied to the store in one transaction (Store.apply)."""

    labels: list[NewLabel] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # example id -> reason
    failed: dict[str, str] = field(default_factory=dict)  # example id -> reason
    retry: dict[str, dict] = field(default_factory=dict)  # stay pending, asked again later; meta merged in
    handoff: dict[str, tuple[str, dict]] = field(default_factory=dict)  # example id -> (labeler, meta): rerouted
    meta: dict = field(default_factory=dict)  # project facts set with them (a Batch job's state)
    llm_calls: list[dict] = field(default_factory=list)  # LLM usage recorded with them (a Batch job's answers)

    def __add__(self, other: Collected) -> Collected:
        return Collected(self.labels + other.labels, {**self.skipped, **other.skipped}, {**self.failed, **other.failed},
                         {**self.retry, **other.retry}, {**self.handoff, **other.handoff}, {**self.meta, **other.meta},
                         self.llm_calls + other.llm_calls)


IN_CHUNK = 900  # ids per `IN (...)`: SQLite caps the bound parameters of one statement


def in_chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    """The ids in slices small enough for one `column IN (...)`; every chunked IN query goes through here."""
    ids = list(ids)
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start:start + IN_CHUNK]


class Store:
    def __init__(self, url: str, readonly: bool = False):
        self.url = store_url.masked(url)  # printable: the password stays inside the engine only
        self.readonly = readonly
        self.engine = store_url.create_engine(url, readonly=readonly)
        self.shared = store_url.is_shared(self.engine.url)  # several project folders may use it at once
        # Several machines write a shared store: rounds and nightly runs take turns (see _hold_round_lock).
        self._writer = store_url.SessionLock(self.engine, store_url.WRITER_LOCK, WRITER_LOCK_WAIT) if self.shared else None
        if readonly:
            return  # a reader of a read-only project: the schema is what the last writer left
        # Two machines starting at once would both create the tables; the lock makes the second wait and find them.
        with self.engine.begin() as conn:
            store_url.lock_for_transaction(conn, store_url.SCHEMA_LOCK)
            metadata.create_all(conn)
            self._migrate(conn)
            stored = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
            if stored is not None and stored < 3:
                # Scores cached before schema 3 are on another scale (margin as p1 - p2): a cache, so recompute.
                conn.execute(scores.delete())
            self._insert_ignore(conn, meta, [{"key": "schema_version", "value": SCHEMA_VERSION}])
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=SCHEMA_VERSION))

    def _migrate(self, conn: sa.Connection) -> None:
        # create_all adds missing tables but never columns; stores made by schema 1 lack queries.meta.
        ix_examples_split_id.create(conn, checkfirst=True)  # create_all adds no index to an existing table
        inspector = sa.inspect(conn)
        for table, name, kind in (("queries", "meta", "JSON"), ("queries", "reason", "VARCHAR"), ("models", "metrics", "JSON")):
            if name not in {c["name"] for c in inspector.get_columns(table)}:
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> Store:
        if not readonly:
            return cls(f"sqlite:///{Path(path)}")
        # mode=ro reads a WAL store while a writer works; with no -shm file and a read-only folder SQLite
        # cannot, and immutable=1 reads it as it is (nobody can write there either).
        uri = Path(path).resolve().as_uri()
        for flags in ("mode=ro", "immutable=1"):
            store = cls(f"sqlite:///{uri}?{flags}&uri=true", readonly=True)
            try:
                with store.engine.connect() as conn:
                    conn.execute(sa.text("SELECT count(*) FROM sqlite_master"))
                return store
            except sa.exc.OperationalError:
                store.close()
        return store

    @classmethod
    def for_project(cls, root: str | Path, url: str | None = None, readonly: bool = False) -> Store:
        """The store of the project in `root`: `url` ([store] url), else $SYNTHLOOP_DB_URL, else SQLite in .synthloop."""
        resolved = store_url.resolve(Path(root), url)
        if readonly and resolved.startswith("sqlite:///"):
            return cls.open(resolved[len("sqlite:///"):], readonly=True)
        return cls(resolved)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()

    @property
    def _dialect(self):
        return sqlite if self.engine.dialect.name == "sqlite" else postgresql

    def _insert_ignore(self, conn, table: sa.Table, rows: Sequence[dict]) -> int:
        if not rows:
            return 0
        stmt = self._dialect.insert(table).on_conflict_do_nothing()
        if self.shared:
            # psycopg reports no rowcount (-1) for a many-row insert; the rows RETURNING gives are the new ones.
            stmt = stmt.returning(*table.primary_key.columns)
        if self.shared:
            rows = [_without_nul(row) for row in rows]
        total = 0
        for start in range(0, len(rows), 5000):
            result = conn.execute(stmt, list(rows[start:start + 5000]))
            total += len(result.all()) if self.shared else result.rowcount
        return total

    # examples -----------------------------------------------------------------------------------
    def add_examples(self, rows: Sequence[dict], new_labels: Sequence[NewLabel] = (), round_: int | None = None) -> int:
        """Insert examples (and labels that came with them, made in `round_`) in one transaction; returns how
        many were new."""
        now = time.time()
        for row in rows:
            row.setdefault("meta", None)
            row.setdefault("gold", None)
            row.setdefault("created_at", now)
        with self.engine.begin() as conn:
            added = self._insert_ignore(conn, examples, rows)
            self._write_labels(conn, new_labels, round_=round_)
        return added

    def synthetic_added(self, round_: int) -> dict[str, int]:
        """Synthetic labels per class made in a round (its top-up), counted from the store: right after a
        crash too, which a tally kept beside the round would miss."""
        stmt = (sa.select(labels.c.label, sa.func.count()).where(labels.c.round == round_)
                .where(labels.c.source.like("synthetic:%")).group_by(labels.c.label))
        with self.engine.connect() as conn:
            return {row[0]: row[1] for row in conn.execute(stmt)}

    def existing_ids(self, ids: Iterable[str]) -> dict[str, str]:
        """Map of id -> split for the ids already stored."""
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in in_chunks(ids):
                for row in conn.execute(sa.select(examples.c.id, examples.c.split).where(examples.c.id.in_(chunk))):
                    found[row.id] = row.split
        return found

    def count_examples(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            stmt = sa.select(examples.c.split, examples.c.origin, sa.func.count()).group_by(examples.c.split, examples.c.origin)
            return {(s, o): n for s, o, n in conn.execute(stmt)}

    def test_set(self) -> tuple[list[str], list[str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(examples.c.text, examples.c.gold)
                .where(examples.c.split == "test", examples.c.gold.is_not(None))
                .order_by(examples.c.id)
            ).all()
        return [r.text for r in rows], [r.gold for r in rows]

    @staticmethod
    def _unlabeled_pool_select():
        labeled = sa.select(labels.c.example_id).where(~labels.c.source.like("synthetic%"))
        queried = sa.select(queries.c.example_id)
        return (
            sa.select(examples.c.id, examples.c.text)
            .where(examples.c.split == "pool", examples.c.origin != "synthetic")
            .where(examples.c.id.not_in(labeled), examples.c.id.not_in(queried))
            .order_by(examples.c.id)
        )

    def unlabeled_pool(self, limit: int | None = None) -> tuple[list[str], list[str]]:
        """Pool examples with no label and no query yet: the candidates a strategy chooses from."""
        stmt = self._unlabeled_pool_select()
        if limit:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [r.id for r in rows], [r.text for r in rows]

    def unlabeled_pool_chunks(self, chunk_size: int = 50_000) -> Iterator[tuple[list[str], list[str]]]:
        """The same examples as unlabeled_pool, as (ids, texts) chunks in id order, one chunk in memory at a time.
        Keyset pagination (id > the last id seen), not OFFSET: each page is an index range scan, so the cost per
        page stays flat however deep into a large pool it is; and each page is its own short read, so no read
        transaction stays open while the caller scores a chunk."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        last = None
        while True:
            stmt = self._unlabeled_pool_select()
            if last is not None:
                stmt = stmt.where(examples.c.id > last)
            with self.engine.connect() as conn:
                rows = conn.execute(stmt.limit(chunk_size)).all()
            if not rows:
                return
            yield [r.id for r in rows], [r.text for r in rows]
            if len(rows) < chunk_size:
                return
            last = rows[-1].id

    def stop_set(self, n: int) -> tuple[list[str], list[str]]:
        """A fixed sample of the pool (ids are hashes, so the first n by id are a random-looking sample)."""
        stmt = (sa.select(examples.c.id, examples.c.text).where(examples.c.split == "pool", examples.c.origin != "synthetic")
                .order_by(examples.c.id).limit(n))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [r.id for r in rows], [r.text for r in rows]

    def pool_texts_sample(self, n: int, seed: int) -> list[str]:
        with self.engine.connect() as conn:
            texts = conn.execute(sa.select(examples.c.text).where(examples.c.split == "pool").order_by(examples.c.id)).scalars().all()
        if len(texts) <= n:
            return list(texts)
        import random

        return random.Random(seed).sample(list(texts), n)

    # labels -------------------------------------------------------------------------------------
    def _write_labels(self, conn, new: Sequence[NewLabel], round_: int | None) -> int:
        now = time.time()
        rows = [
            {"example_id": x.example_id, "label": x.label, "source": x.source, "confidence": x.confidence,
             "round": round_, "cost": x.cost, "meta": x.meta, "created_at": now}
            for x in new
        ]
        return self._insert_ignore(conn, labels, rows)

    def record_labels(self, new: Sequence[NewLabel], round_: int | None) -> int:
        """Store labels and mark their queries labeled, atomically; a label already stored is not added twice."""
        return self.apply(Collected(labels=list(new)), round_)

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

    def _column_by_id(self, column: sa.Column, example_ids: Sequence[str]) -> dict[str, str]:
        out = {}
        with self.engine.connect() as conn:
            for chunk in in_chunks(example_ids):
                rows = conn.execute(sa.select(examples.c.id, column).where(examples.c.id.in_(chunk)))
                out.update({r.id: getattr(r, column.name) for r in rows if getattr(r, column.name) is not None})
        return out

    def origins(self, example_ids: Sequence[str]) -> dict[str, str]:
        return self._column_by_id(examples.c.origin, example_ids)

    def gold_for(self, example_ids: Sequence[str]) -> dict[str, str]:
        return self._column_by_id(examples.c.gold, example_ids)

    def labeled_export(self) -> list[dict]:
        return [
            {"id": i, "text": t, "label": lab, "source": src}
            for i, t, lab, src in self.training_set()
            if not src.startswith("synthetic")
        ]

    # queries: every change of a query's status is one of these methods -----------------------------
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
        return added

    def mark_submitted(self, example_ids: Sequence[str], meta_values: dict | None = None) -> None:
        """Queries handed to their labeler, with what the hand-out left to remember (a Batch job), at once."""
        with self.engine.begin() as conn:
            self._update_queries(conn, example_ids, submitted_at=time.time())
            for key, value in (meta_values or {}).items():
                self._upsert_meta(conn, key, value)

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

    # LLM usage and response cache ---------------------------------------------------------------
    def cache_get(self, key: str) -> dict | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(llm_cache.c.value).where(llm_cache.c.key == key)).scalar()

    def cache_put(self, key: str, value: dict) -> None:
        with self.engine.begin() as conn:
            self._insert_ignore(conn, llm_cache, [{"key": key, "value": value, "created_at": time.time()}])

    # project facts worth keeping between commands (e.g. a model version's measured latency) ------------
    def get_meta(self, key: str):
        with self.engine.connect() as conn:
            return conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()

    def _upsert_meta(self, conn, key: str, value) -> None:
        stmt = self._dialect.insert(meta).values(key=key, value=value)
        conn.execute(stmt.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": stmt.excluded.value}))

    def set_meta(self, key: str, value) -> None:
        with self.engine.begin() as conn:
            self._upsert_meta(conn, key, value)

    def meta_with_prefix(self, prefix: str) -> dict:
        """Every meta entry whose key starts with prefix, by key."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(meta.c.key, meta.c.value).where(meta.c.key.startswith(prefix, autoescape=True))
                                .order_by(meta.c.key))
            return dict(rows.all())

    def record_llm_calls(self, calls: Sequence[dict], meta_values: dict | None = None) -> None:
        """calls: dicts with purpose, model, prompt_tokens, completion_tokens, cost, latency, cached, ok, round.
        meta_values ({key: value}) are set in the same transaction: a Batch API job is marked collected together
        with its usage, so a kill between the two can neither lose its cost nor record it twice."""
        now = time.time()
        with self.engine.begin() as conn:
            if calls:
                conn.execute(llm_calls.insert(), [{"created_at": now, **c} for c in calls])
            for key, value in (meta_values or {}).items():
                self._upsert_meta(conn, key, value)

    def llm_usage(self, round_: int | None = None) -> list[dict]:
        """Totals per (purpose, model): calls, tokens in/out, $ and seconds; cache hits counted apart."""
        stmt = sa.select(
            llm_calls.c.purpose, llm_calls.c.model, sa.func.count().label("calls"),
            sa.func.sum(sa.case((llm_calls.c.cached, 1), else_=0)).label("cached"),
            sa.func.sum(sa.case((llm_calls.c.ok, 0), else_=1)).label("failed"),
            sa.func.sum(llm_calls.c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(llm_calls.c.completion_tokens).label("completion_tokens"),
            sa.func.sum(llm_calls.c.cost).label("cost"), sa.func.sum(llm_calls.c.latency).label("latency"),
        ).group_by(llm_calls.c.purpose, llm_calls.c.model)
        if round_ is not None:
            stmt = stmt.where(llm_calls.c.round == round_)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def llm_cost_since(self, since: float, exclude_purposes: Sequence[str] = ()) -> float:
        """$ of the LLM calls recorded at or after `since` (a time.time()), e.g. what a night has spent so far."""
        stmt = sa.select(sa.func.coalesce(sa.func.sum(llm_calls.c.cost), 0.0)).where(llm_calls.c.created_at >= since)
        if exclude_purposes:
            stmt = stmt.where(llm_calls.c.purpose.not_in(list(exclude_purposes)))
        with self.engine.connect() as conn:
            return float(conn.execute(stmt).scalar_one())  # an aggregate: always one row, coalesced to 0.0

    def llm_usage_by_round(self) -> list[dict]:
        """Calls, tokens, $ and seconds per round (None: calls made outside any round)."""
        stmt = sa.select(
            llm_calls.c.round, sa.func.count().label("calls"),
            sa.func.sum(llm_calls.c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(llm_calls.c.completion_tokens).label("completion_tokens"),
            sa.func.sum(llm_calls.c.cost).label("cost"), sa.func.sum(llm_calls.c.latency).label("latency"),
        ).group_by(llm_calls.c.round).order_by(llm_calls.c.round)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def next_round_number(self) -> int:
        """The round that work done now feeds: the unfinished one, else the next."""
        with self.engine.connect() as conn:
            last = conn.execute(sa.select(rounds).order_by(rounds.c.number.desc()).limit(1)).first()
        return 0 if last is None else last.number + (last.status == "done")

    # nightly runs: pool files seen, cached scores, run records ---------------------------------------
    def pool_file(self, path: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(pool_files).where(pool_files.c.path == path)).first()
        return dict(row._mapping) if row else None

    def record_pool_file(self, path: str, size: int, mtime: float, rows: int, added: int) -> None:
        values = {"size": size, "mtime": mtime, "rows": rows, "added": added, "imported_at": time.time()}
        # An upsert, not delete + insert: two machines recording one path at once would both insert.
        stmt = self._dialect.insert(pool_files).values(path=path, **values)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=[pool_files.c.path], set_=values))

    def cached_scores(self, model_version: int, strategy: str) -> dict[str, float]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(scores.c.example_id, scores.c.uncertainty)
                                .where(scores.c.model_version == model_version, scores.c.strategy == strategy))
            return dict(rows.all())

    def scored_ids(self, strategy: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(scores.c.example_id).where(scores.c.strategy == strategy).distinct()).scalars())

    def latest_scored_version(self, strategy: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(scores.c.model_version)).where(scores.c.strategy == strategy)).scalar()

    def save_scores(self, model_version: int, strategy: str, values: dict[str, float]) -> None:
        rows = [{"example_id": k, "model_version": model_version, "strategy": strategy, "uncertainty": v} for k, v in values.items()]
        with self.engine.begin() as conn:
            self._insert_ignore(conn, scores, rows)

    def start_run(self, kind: str) -> int:
        with self.engine.begin() as conn:
            key = conn.execute(runs.insert().values(kind=kind, status="running", started_at=time.time())).inserted_primary_key
        assert key is not None  # a single-row insert always has one
        return key[0]

    def mark_killed_runs(self, kind: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.kind == kind, runs.c.status == "running").values(status="killed"))

    def finish_run(self, run_id: int, status: str, summary: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(status=status, summary=summary, finished_at=time.time()))

    def runs(self, kind: str | None = None) -> list[dict]:
        stmt = sa.select(runs).order_by(runs.c.id)
        if kind:
            stmt = stmt.where(runs.c.kind == kind)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    # rounds and models --------------------------------------------------------------------------
    def open_round(self) -> tuple[int, bool]:
        """The round to work on: the unfinished one if a run stopped midway (resumed=True), else a new one.
        On a shared store this process first takes the round lock, so machines run rounds one after another
        (see _hold_round_lock)."""
        self._hold_round_lock()
        with self.engine.begin() as conn:
            last = conn.execute(sa.select(rounds).order_by(rounds.c.number.desc()).limit(1)).first()
            if last is not None and last.status != "done":
                return last.number, True
            number = 0 if last is None else last.number + 1
            conn.execute(rounds.insert().values(number=number, status="open", started_at=time.time(), timings={}, counts={}))
            return number, False

    def _hold_round_lock(self) -> None:
        """Two machines sharing one PostgreSQL store would both read round N as the last and open N+1 (or both
        resume one open round) and then train, select and route side by side. The writer lock, held from
        open_round until the round is marked done or this store closes, makes the second wait; a crashed
        round is then resumed by whichever machine comes next."""
        if self._writer is not None and not self._writer.holders["round"]:
            self._writer.hold("round")

    def _release_round(self) -> None:
        if self._writer is not None:
            self._writer.release("round", all_holds=True)

    @contextmanager
    def exclusive(self, holder: str = "block"):
        """Run the block as the only writer of a shared store (other machines' exclusive blocks and rounds
        wait); on SQLite, where the project lock already keeps other processes out, it does nothing."""
        if self._writer is None:
            yield
            return
        self._writer.hold(holder)
        try:
            yield
        finally:
            self._writer.release(holder)

    def current_round(self) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(rounds.c.number))).scalar()

    def round(self, number: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(rounds).where(rounds.c.number == number)).first()
        return dict(row._mapping) if row else None

    def rounds(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(rounds).order_by(rounds.c.number))]

    def update_round(self, number: int, **values) -> None:
        with self.engine.begin() as conn:
            conn.execute(rounds.update().where(rounds.c.number == number).values(**values))
        if values.get("status") == "done":
            self._release_round()

    def add_model(self, version: int, round_: int | None, name: str, path: str, n_train: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(models.insert().values(version=version, round=round_, name=name, path=path, n_train=n_train,
                                                created_at=time.time()))
            if round_ is not None:
                conn.execute(rounds.update().where(rounds.c.number == round_).values(model_version=version))

    def set_model_metrics(self, version: int, metrics: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(models.update().where(models.c.version == version).values(metrics=metrics))

    def next_model_version(self) -> int:
        with self.engine.connect() as conn:
            return (conn.execute(sa.select(sa.func.max(models.c.version))).scalar() or 0) + 1

    def latest_model(self) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).order_by(models.c.version.desc()).limit(1)).first()
        return dict(row._mapping) if row else None

    def model(self, version: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.version == version)).first()
        return dict(row._mapping) if row else None

    # files shared between the machines of a shared store -----------------------------------------
    def put_files(self, blobs: dict[str, bytes]) -> None:
        """Store files by name in one transaction; a name already stored keeps its first content."""
        with self.engine.begin() as conn:
            self._insert_ignore(conn, files, [{"name": k, "data": v, "created_at": time.time()} for k, v in blobs.items()])

    def get_file(self, name: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(files.c.data).where(files.c.name == name)).scalar()
