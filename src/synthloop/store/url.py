"""Which database the store lives in: SQLite in the project folder unless a URL names PostgreSQL.

The URL is `[store] url` in synthloop.toml if set, else $SYNTHLOOP_DB_URL, else
sqlite:///<project>/.synthloop/store.db (a relative sqlite:/// path is taken from the project folder).
A PostgreSQL URL may hold a password: keep it out of synthloop.toml (often committed) by putting the whole URL
in $SYNTHLOOP_DB_URL, or a URL without one in [store] url plus the password in $PGPASSWORD (libpq reads it).
No URL is ever printed unmasked: `masked()` is the only form that reaches messages and logs.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from synthloop.config import STATE_DIR
from synthloop.errors import SynthloopError

URL_ENV = "SYNTHLOOP_DB_URL"
STORE_FILE = "store.db"
LOCAL_STORE = f"sqlite:///{STATE_DIR}/{STORE_FILE}"  # as [store] url: SQLite in the project folder, whatever the env says
CONNECT_TIMEOUT = 10  # seconds: a server that does not answer fails the command instead of hanging it
DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}  # psycopg 3, not SQLAlchemy's default psycopg2


def resolve(root: Path, configured: str | None = None) -> str:
    """The store's URL for the project in `root`."""
    url = (configured or "").strip() or os.environ.get(URL_ENV, "").strip()
    if not url:
        return f"sqlite:///{Path(root) / STATE_DIR / STORE_FILE}"
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # A path in synthloop.toml means "from the project folder", wherever the command runs.
        return f"sqlite:///{Path(root) / url[len('sqlite:///'):]}"
    return url


def parse(url: str) -> URL:
    """The URL as SQLAlchemy takes it, with PostgreSQL's driver set to psycopg; a one-line error otherwise."""
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise SynthloopError(f"store URL {masked(url)!r} is not a database URL; set ${URL_ENV} (or [store] url) to "
                             "postgresql://USER:PASSWORD@HOST:PORT/DB, or unset it for SQLite in .synthloop") from None
    backend = parsed.get_backend_name()
    if backend not in DRIVERS:
        raise SynthloopError(f"store URL {masked(url)!r} names {backend!r}; synthloop stores in sqlite or postgresql")
    if backend == "postgresql":
        if "+" not in parsed.drivername:  # SQLAlchemy 2.0 would pick psycopg2 for a bare postgresql://
            parsed = parsed.set(drivername=DRIVERS[backend])
        if parsed.drivername == DRIVERS[backend]:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise SynthloopError("the store URL names PostgreSQL but psycopg is not installed: "
                                     "pip install 'synthloop[postgres]'") from None
    return parsed


def masked(url: str | URL) -> str:
    """The URL with its password replaced by ***, safe to print; text that is not a URL is not echoed back."""
    try:
        return (make_url(url) if isinstance(url, str) else url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<not a URL>"


def is_shared(url: str | URL) -> bool:
    """True for a server database several project folders (machines) may use at once."""
    return (make_url(url) if isinstance(url, str) else url).get_backend_name() != "sqlite"


def _finite(value):
    """JSON has no NaN or Infinity; PostgreSQL's json type refuses them, so both dialects store null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # a NaN or inf somewhere: rare, so the fast path above stays the common one
        return json.dumps(_finite(value), allow_nan=False)


def _on_sqlite_connect(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _on_sqlite_connect_readonly(dbapi_conn, _record):
    dbapi_conn.execute("PRAGMA busy_timeout=30000")


def create_engine(url: str, readonly: bool = False) -> sa.Engine:
    """An engine for the store's URL: SQLite with WAL and foreign keys, or PostgreSQL through psycopg 3."""
    parsed = parse(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(parsed, json_serializer=dumps)
        sa.event.listen(engine, "connect", _on_sqlite_connect_readonly if readonly else _on_sqlite_connect)
        return engine
    # pre_ping: a nightly job outlives server restarts and idle timeouts; a dead pooled connection is replaced.
    engine = sa.create_engine(parsed, json_serializer=dumps, pool_pre_ping=True,
                              connect_args={"connect_timeout": CONNECT_TIMEOUT, "application_name": "synthloop"})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as err:
        engine.dispose()
        # The driver's message names host and port, never the password; the URL is shown masked.
        reason = str(err.orig).strip().splitlines()[0] if err.orig is not None else "no answer"
        raise SynthloopError(f"cannot reach the store at {masked(parsed)}: {reason}; start the PostgreSQL server, "
                             f"or fix ${URL_ENV} / [store] url") from ConnectionError(reason)
    return engine


# Advisory lock keys (any 64-bit numbers, fixed so every machine uses the same ones).
SCHEMA_LOCK = 0x53594E5448_01  # creating or migrating tables
WRITER_LOCK = 0x53594E5448_02  # one round (or nightly run) at a time per database, whichever machine runs it


def lock_for_transaction(conn: sa.Connection, key: int) -> None:
    """Hold `key` until conn's transaction ends (PostgreSQL); SQLite serializes writers by itself."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


class SessionLock:
    """A PostgreSQL session-level advisory lock on a connection of its own, shared by nested holders (a nightly
    run holds it and so does the round inside it) and released when the last lets go. The server drops it when
    the connection dies, kill -9 of the holder included, so a crashed holder never blocks the next one."""

    def __init__(self, engine: sa.Engine, key: int, wait: float):
        self.engine, self.key, self.wait = engine, key, wait
        self.holders: Counter[str] = Counter()
        self._conn: sa.Connection | None = None

    def hold(self, holder: str) -> None:
        if self._conn is None:
            conn = self.engine.connect()
            try:
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(self.wait * 1000)}ms'"))
                conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
                conn.commit()  # ends the transaction (and lock_timeout); the session-level lock stays
            except sa.exc.OperationalError as err:
                conn.close()
                raise SynthloopError(f"another machine has been working on the shared store at {masked(self.engine.url)} "
                                     f"for over {self.wait / 60:.0f} minutes; this run did nothing: run it again "
                                     "once that one has finished") from err
            self._conn = conn
        self.holders[holder] += 1

    def release(self, holder: str, all_holds: bool = False) -> None:
        if self.holders[holder] > 0:
            self.holders[holder] = 0 if all_holds else self.holders[holder] - 1
        if self._conn is not None and not +self.holders:
            conn, self._conn = self._conn, None
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
                conn.commit()
            except sa.exc.DBAPIError:
                pass  # the connection is gone (server restart): the server dropped the lock with it
            finally:
                conn.close()

    def close(self) -> None:
        self.holders.clear()
        self.release("")
