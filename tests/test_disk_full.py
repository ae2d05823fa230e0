"""A full disk mid-command: exit 74 (EX_IOERR) with one line saying so and that nothing stored was lost, no
traceback, and a store that is consistent and works again once there is space.

Three real ways to run out, none of them a mock:
- a small tmpfs the project lives on, filled up (needs `mount`, so root in a container that permits it; skipped
  with the reason where mount is refused, as the two below cover the same guarantees without it);
- SQLite's own `max_page_count`, set on every connection of a real `synthloop` process: SQLite then answers
  SQLITE_FULL ("database or disk is full"), the very error a full disk gives it;
- /dev/full, which fails every write with ENOSPC, in place of the model file a `train` writes.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from forkserver import run_synthloop
from helpers import EXAMPLE

from synthloop import Project
from synthloop.errors import EXIT_IOERR

FULL = "Nothing stored is lost: the store keeps every finished step"

# `python -c WRAPPER N args...`: the real CLI, with SQLite's page limit set to N on every connection it opens.
WRAPPER = """
import sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

limit = int(sys.argv[1])

@event.listens_for(Engine, "connect")
def _cap(dbapi_connection, _):
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA max_page_count = {limit}")
    cursor.close()

from synthloop.cli.main import app
app(sys.argv[2:], prog_name="synthloop")
"""


def synthloop(*args, cwd, page_limit: int | None = None):
    if not page_limit:
        return run_synthloop(*args, cwd=cwd, timeout=900)
    return subprocess.run([sys.executable, "-c", WRAPPER, str(page_limit), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def counts(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / ".synthloop" / "store.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("examples", "labels", "queries", "rounds", "models")}


def page_count(root: Path) -> int:
    with sqlite3.connect(root / ".synthloop" / "store.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return db.execute("PRAGMA page_count").fetchone()[0]


def says_disk_full(proc) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == EXIT_IOERR, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert lines and FULL in lines[-1] and "the disk is full" in lines[-1] and "Free some space" in lines[-1], proc.stderr
    assert sum(FULL in line for line in lines) == 1


def new_texts(folder: Path, n: int, tag: str) -> Path:
    rows = pd.DataFrame({"text": [f"{tag} message number {i} about {'x' * (i % 400)} things" for i in range(n)]})
    rows.to_csv(folder / f"{tag}.csv", index=False)
    return folder / f"{tag}.csv"


@pytest.fixture
def project_dir(tmp_path) -> Path:
    """A small project after one round (oracle labels from the gold pool), closed for subprocesses."""
    root = tmp_path / "p"
    Project.init(root, EXAMPLE / "task.toml", loop={"batch_size": 5, "strategy": "margin"}).close()
    project = Project(root)
    pool = pd.read_csv(EXAMPLE / "pool.csv").head(200)
    pool.to_csv(tmp_path / "pool.csv", index=False)
    project.import_file(tmp_path / "pool.csv", label_col="label", gold=True)
    project.round()
    project.close()
    return root


def test_sqlite_full_during_import_exits_74_and_loses_nothing(project_dir, tmp_path):
    before = counts(project_dir)
    limit = page_count(project_dir) + 2  # room for a page or two: the import's batch does not fit
    proc = synthloop("import", new_texts(tmp_path, 5000, "big"), cwd=project_dir, page_limit=limit)
    says_disk_full(proc)
    assert counts(project_dir) == before  # the batch that did not fit was rolled back whole

    # Space is back: the same commands work, and the project is whole.
    proc = synthloop("import", tmp_path / "big.csv", cwd=project_dir)
    assert proc.returncode == 0, proc.stderr
    proc = synthloop("round", cwd=project_dir)
    assert proc.returncode == 0, proc.stderr
    final = counts(project_dir)
    assert final["examples"] == before["examples"] + 5000 and final["rounds"] == before["rounds"] + 1
    status = synthloop("status", "--json", cwd=project_dir)
    assert status.returncode == 0, status.stderr


def test_a_model_file_that_cannot_be_written_exits_74_and_stores_no_model(project_dir):
    before = counts(project_dir)
    models = project_dir / ".synthloop" / "models"
    # The next version's temporary file is /dev/full: every write to it fails with ENOSPC, as on a full disk.
    tmp = models / f"v{before['models'] + 1:04d}.tmp"
    tmp.symlink_to("/dev/full")
    proc = synthloop("train", cwd=project_dir)
    says_disk_full(proc)
    assert counts(project_dir) == before
    assert not (models / f"v{before['models'] + 1:04d}.joblib").exists()
    tmp.unlink()  # space is back
    proc = synthloop("train", cwd=project_dir)
    assert proc.returncode == 0, proc.stderr
    assert counts(project_dir)["models"] == before["models"] + 1


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full file system needs `mount -t tmpfs` as root; the SQLite and /dev/full tests "
                    "cover the same guarantees")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here ({done.stderr.strip()}); the SQLite and /dev/full tests "
                    "cover the same guarantees")


def _fill(folder: Path, leave: int) -> Path:
    """A filler file that leaves about `leave` bytes free on folder's file system."""
    free = shutil.disk_usage(folder).free
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        remaining = max(free - leave, 0)
        while remaining > 0:
            remaining -= f.write(chunk[:min(len(chunk), remaining)])
    return filler


def test_a_full_file_system_during_import_and_round(project_dir, tmp_path):
    mnt = tmp_path / "small-disk"
    _mount_tmpfs(mnt, "128m")
    try:
        root = mnt / "p"
        shutil.copytree(project_dir, root)
        before = counts(root)
        filler = _fill(mnt, leave=256 * 1024)  # room to open the store and take the lock, not for 3000 texts
        proc = synthloop("import", new_texts(tmp_path, 3000, "big"), cwd=root)
        says_disk_full(proc)
        assert counts(root) == before

        filler.unlink()
        filler = _fill(mnt, leave=48 * 1024)  # the store opens; a round's rows and model file do not fit
        proc = synthloop("round", cwd=root)
        says_disk_full(proc)
        after = counts(root)
        assert after["labels"] == before["labels"] and after["examples"] == before["examples"]

        filler.unlink()
        filler = _fill(mnt, leave=16 * 1024)  # the store's -shm file may not grow: the disk is full, not the store damaged
        proc = synthloop("round", cwd=root)
        says_disk_full(proc)
        proc = synthloop("status", cwd=root)  # a reader works if the -shm file is already there, else says why
        assert proc.returncode == 0 or (says_disk_full(proc) is None and "damaged" not in proc.stderr), proc.stderr
        assert counts(root) == after

        filler.unlink()  # space is back
        for command in (["import", tmp_path / "big.csv"], ["round"], ["status", "--json"]):
            proc = synthloop(*command, cwd=root)
            assert proc.returncode == 0, (command, proc.stderr)
        final = counts(root)
        assert final["examples"] == before["examples"] + 3000 and final["rounds"] >= before["rounds"] + 1
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_nightly_run_record_gives_a_full_disk_its_own_exit_status():
    """nightly records a failed run through the CLI's own mapping (synthloop.errors.failure): a full disk is 74
    there too, raised bare (ENOSPC) or wrapped by a library, with the disk-full message, never 1 ("a bug")."""
    import errno

    from synthloop.errors import EXIT_FAILED, EXIT_IOERR, DiskFull, failure

    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as wrapped:
        error, status = failure(wrapped)
        assert status == EXIT_IOERR == 74 and isinstance(error, DiskFull) and "disk is full" in str(error)
    assert failure(RuntimeError("something else"))[1] == EXIT_FAILED
