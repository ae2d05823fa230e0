"""Errors as types, and the one place that maps them to exit statuses.

A user error is a `ValueError` (as in distilabel): the input or the project is wrong and the message names the
fix. `Unavailable` and `Locked` say "nothing was wrong with what you asked; try again later".
"""

from __future__ import annotations

# sysexits.h codes a scheduler can act on: 69 (EX_UNAVAILABLE) "a server did not answer, retry later",
# 74 (EX_IOERR) "the disk is full: free space, then run again", 75 (EX_TEMPFAIL) "another run is at work, nothing
# was done".
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_IOERR, EXIT_LOCKED = 0, 1, 2, 69, 74, 75


class SynthloopError(ValueError):
    """A problem with the user's input or project; the message says how to fix it (exit status 2)."""

    exit_code = EXIT_USAGE
    label = "error"


class UnknownChoice(SynthloopError):
    """A name (strategy, model, labeler) that is not one of the choices; the message lists them (exit 2)."""


class Unavailable(SynthloopError):
    """A server the run needs did not answer: nothing is lost, and a later run does the work (exit 69)."""

    exit_code = EXIT_UNAVAILABLE
    label = "unavailable"


class DiskFull(SynthloopError):
    """The disk (or the database's space) ran out mid-command; the store rolled the unfinished step back (exit 74).
    Not the input's fault, so not 2: a scheduler can tell "free space, then rerun" from "fix the command"."""

    exit_code = EXIT_IOERR


class Locked(SynthloopError):
    """Another process holds the project's lock; this one did nothing (exit 75)."""

    exit_code = EXIT_LOCKED
    label = "locked"


def _network_types() -> tuple[type, ...]:
    """Other libraries' words for "a server did not answer", imported only when an error needs a status."""
    found: list[type] = [ConnectionError, TimeoutError]
    try:
        import httpx

        found.append(httpx.TransportError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import openai

        found.append(openai.APIConnectionError)  # APITimeoutError is one too
    except ImportError:  # pragma: no cover
        pass
    return tuple(found)


def exit_code(error: BaseException) -> int:
    """The exit status for an error that ended a command. Our own errors carry theirs; a network error from a
    library is 69; a SynthloopError raised while a server did not answer is 69 too (a client wrapped it);
    anything else is a bug: 1."""
    if isinstance(error, SynthloopError) and type(error).exit_code != EXIT_USAGE:
        return type(error).exit_code
    network = _network_types()
    if isinstance(error, network):
        return EXIT_UNAVAILABLE
    if isinstance(error, SynthloopError):
        # Only the error this one was raised from or while handling: the SDKs' own wrapping, one level deep.
        inner = error.__cause__ or error.__context__
        return EXIT_UNAVAILABLE if isinstance(inner, network) else EXIT_USAGE
    return EXIT_FAILED


# SQLite's "disk I/O error"s that say a write or a file's growth failed: on a full disk, opening the store fails with
# SQLITE_IOERR_SHMSIZE (its -shm file cannot grow) before any SQLITE_FULL. The store's content is untouched by
# them; "damaged" is for what reading it finds (not a database, malformed, a short read).
SQLITE_WRITE_ERRORS = frozenset({"SQLITE_IOERR_SHMSIZE", "SQLITE_IOERR_SHMMAP", "SQLITE_IOERR_WRITE",
                                 "SQLITE_IOERR_FSYNC", "SQLITE_IOERR_TRUNCATE", "SQLITE_IOERR_DIR_FSYNC"})


def _disk_full(error: BaseException | None) -> bool:
    """ENOSPC (a file write), SQLITE_FULL or PostgreSQL's "No space left on device", raised or wrapped."""
    import errno

    for _ in range(4):  # the error, and what it was raised from or while handling (a library's wrapping)
        if error is None:
            return False
        inner = getattr(error, "orig", None) or error
        text = str(inner).lower()
        if isinstance(inner, OSError) and inner.errno == errno.ENOSPC or any(
                s in text for s in ("database or disk is full", "no space left on device")):
            return True
        error = error.__cause__ or error.__context__
    return False


def failure(raised: BaseException) -> tuple[BaseException, int]:
    """What ended a command, as the user should read it (a machine error explained, see `explain`), and its
    exit status: the CLI's error handler and nightly's run record both ask this."""
    error = explain(raised) or raised
    return error, exit_code(error)


def explain(error: BaseException) -> SynthloopError | None:
    """A user error for what the machine or the files did (disk full, a damaged store, a read-only folder),
    with the fix; None for anything else. SQLite rolls the interrupted transaction back, so the store is as
    the last finished step left it."""
    import sqlite3

    inner = getattr(error, "orig", None) or error  # SQLAlchemy wraps the sqlite3 error
    text = str(inner).lower()
    sqlite_error = getattr(inner, "sqlite_errorname", None)
    write_failed = sqlite_error in SQLITE_WRITE_ERRORS
    if _disk_full(error) or write_failed:
        why = f" (or would not take a write: {sqlite_error})" if write_failed else ""
        return DiskFull(f"the disk is full{why}. Nothing stored is lost: the store keeps every finished step and "
                        "dropped the unfinished one. Free some space and run the command again")
    if isinstance(inner, sqlite3.DatabaseError) and any(
            s in text for s in ("not a database", "malformed", "disk i/o error", "unsupported file format")):
        return SynthloopError(f"the store (.synthloop/store.db) is damaged ({inner}); restore it from a backup "
                              "(`sqlite3 store.db .recover > saved.sql` may rescue what is left)")
    if isinstance(inner, sqlite3.OperationalError) and "readonly database" in text:
        return SynthloopError("the store is read-only for this user; run the command as its owner, or on a "
                              "writable copy (status, predict and export only read)")
    if isinstance(inner, PermissionError):
        return SynthloopError(f"permission denied: {inner.filename or inner}; run as the project's owner or fix the "
                              "folder's permissions")
    return None
