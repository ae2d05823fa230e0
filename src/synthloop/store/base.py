"""The store's connection and schema upkeep: opening (SQLite or PostgreSQL, read-only too), migrating an older
store, inserts that skip what is stored, project facts (meta), the writer lock of a shared store, shared files.

Every write is one transaction, so a process killed at any point leaves the store as it was before the write
or after it, never in between; the loop resumes from what is stored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from synthloop.store import url as store_url
from synthloop.store.migrate import migrate
from synthloop.store.schema import SCHEMA_VERSION, files, meta, metadata

WRITER_LOCK_WAIT = 3600.0  # seconds a round waits for another machine's round on a shared store


def _without_nul(row: dict) -> dict:
    """PostgreSQL's text cannot hold NUL (SQLite's can): it becomes U+FFFD, as a decoder marks a bad byte."""
    if not any(isinstance(v, str) and "\x00" in v for v in row.values()):
        return row
    return {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in row.items()}


class StoreBase:
    """What every part of Store builds on: the engine, the inserts, the meta facts and the writer lock."""

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
            migrate(conn)
            self._insert_ignore(conn, meta, [{"key": "schema_version", "value": SCHEMA_VERSION}])
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=SCHEMA_VERSION))

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> Self:
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
    def for_project(cls, root: str | Path, url: str | None = None, readonly: bool = False) -> Self:
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

    def meta_with_prefix(self, prefix: str) -> dict[str, Any]:
        """Every meta entry whose key starts with prefix, by key; a value is the JSON its writer set (set_meta)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(meta.c.key, meta.c.value).where(meta.c.key.startswith(prefix, autoescape=True))
                                .order_by(meta.c.key))
            return dict(rows.all())

    # one writer at a time on a shared store -----------------------------------------------------------
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

    # files shared between the machines of a shared store -----------------------------------------
    def put_files(self, blobs: dict[str, bytes]) -> None:
        """Store files by name in one transaction; a name already stored keeps its first content."""
        with self.engine.begin() as conn:
            self._insert_ignore(conn, files, [{"name": k, "data": v, "created_at": time.time()} for k, v in blobs.items()])

    def get_file(self, name: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(files.c.data).where(files.c.name == name)).scalar()
