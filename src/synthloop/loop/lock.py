"""One writer at a time: the project lock every command that changes the store takes.

An exclusive `flock` on .synthloop/lock. The OS drops it when the holder dies, even on kill -9, so the lock
of a dead process is simply taken over. Beside the lock, the file names its holder (pid, command, since) so a
refused run can say who is at work. Read-only commands (status, predict, export) never take it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from synthloop.errors import Locked, SynthloopError

LOCK_FILE = "lock"
POLL_SECONDS = 0.1

# Locks this process holds, by path: a command that calls another locked step (nightly runs a round) must not
# wait for itself. flock is per open file, so a second open() in the same process would conflict.
_held: dict[str, int] = {}


def holder(path: Path) -> dict | None:
    """Who holds (or last held) the lock at `path`, as the holder wrote it."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def describe(info: dict | None) -> str:
    if not info:
        return "another synthloop process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid')} on {info.get('host', '?')} (`synthloop {info.get('command', '?')}`, since {since})"


def _open(path: Path):
    try:
        return open(path, "a+", encoding="utf-8")
    except PermissionError:
        raise SynthloopError(f"cannot write to {path.parent}: the project is read-only; this command changes it, "
                             "so run it where the project folder is writable (status, predict and export only read)") from None
    except FileNotFoundError:
        raise SynthloopError(f"{path.parent} is missing: this is not a synthloop project (run `synthloop init`), "
                             "or --project points at the wrong folder") from None


@contextmanager
def project_lock(state_dir: Path, command: str, wait: float = 0.0):
    """Hold the project's lock while the block runs. Waits up to `wait` seconds for another holder, then
    raises Locked naming it."""
    path = Path(state_dir) / LOCK_FILE
    key = str(path.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    handle = _open(path)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                info = holder(path)
                for _ in range(20):  # the holder writes who it is just after taking the lock: give it a moment
                    if info is not None:
                        break
                    time.sleep(0.05)
                    info = holder(path)
                handle.close()
                waited = f" after waiting {wait:g} s" if wait > 0 else ""
                raise Locked(f"another synthloop run holds {path}{waited}: {describe(info)}; this run did nothing. "
                             "Try again when it ends, or pass --wait SECONDS to queue behind it") from None
            time.sleep(POLL_SECONDS)
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                             "since": time.time()}))
    handle.flush()
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        try:
            handle.seek(0)
            handle.truncate()  # nobody holds it now: a refused run must not name a finished one
        except OSError:
            pass
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
