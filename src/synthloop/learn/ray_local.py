"""A local Ray that synthloop starts does not outlive the run that started it.

`ray.init(address="local")` starts a head (GCS, raylet, dashboard and runtime-env agents, workers) as
processes of its own; `ray.shutdown()` stops them, but a run killed with `kill -9` never gets there and
some of them (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) stay, adopted by init. So before starting Ray
the run puts a marker in its environment, which every Ray process it starts inherits (workers too, whose
command line Ray rewrites), and notes it in `.synthloop/ray-local.json`. The next run that finds the note
of a run that is gone kills the processes carrying that marker (Linux: read from /proc/PID/environ) and
drops the note. A cluster named with `--address` is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import uuid
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("synthloop.learn.scale")
MARKER = "SYNTHLOOP_RAY_OWNER"
NOTE = "ray-local.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def marked(token: str) -> list[int]:
    """Pids of the processes whose environment carries this run's marker (not this process)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def reap(state_dir: Path) -> int:
    """Kill what a dead run's local Ray left behind; returns how many processes. A live run's is left alone."""
    note = Path(state_dir) / NOTE
    try:
        owner = json.loads(note.read_text())
    except (OSError, ValueError):
        return 0
    if owner.get("pid") != os.getpid() and _alive(int(owner.get("pid", 0))):
        return 0
    pids = marked(str(owner.get("token")))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    note.unlink(missing_ok=True)
    if pids:
        log.warning("killed %d processes of a local Ray that run %s (pid %s) left behind", len(pids),
                    owner.get("started_by", "?"), owner.get("pid"))
    return len(pids)


@contextmanager
def owned(state_dir: Path | None):
    """Around ray.init and ray.shutdown of a local Ray: mark what it starts, note it for the next run."""
    if state_dir is None:
        yield
        return
    reap(state_dir)
    token = uuid.uuid4().hex
    note = Path(state_dir) / NOTE
    note.write_text(json.dumps({"pid": os.getpid(), "token": token, "started_by": "synthloop"}))
    saved = os.environ.get(MARKER)
    os.environ[MARKER] = token
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(MARKER, None)
        else:
            os.environ[MARKER] = saved
        for pid in marked(token):  # after ray.shutdown: agents it did not wait for
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        note.unlink(missing_ok=True)
