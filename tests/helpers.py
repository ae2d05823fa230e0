"""What tests share besides fixtures: paths and the skip-or-fail rule. Import it as `from helpers import ...`;
conftest.py is pytest's, for fixtures, and is not imported by the tests themselves."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sms_spam"
SHARED_DATA = ROOT.parent / "shared" / "data"


def artifact(name: str) -> Path:
    """A file in test-artifacts/ (server logs CI keeps); under pytest-xdist one per worker (llm-server.gw0.log),
    so two workers' servers never write one file."""
    folder = ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return folder / (f"{Path(name).stem}.{worker}{Path(name).suffix}" if worker else name)


def skip_or_fail(reason: str) -> None:
    """Skip a test (or a whole module) whose tool (chromium, playwright, Argilla, Ray, llama.cpp) is missing,
    except under CI (`make test` sets CI=1): there a skip would hide that the test never ran."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI is set, so this fails instead of skipping", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def wait_for(condition, timeout: float = 120.0, what: str = "condition", every: float = 0.05):
    """Poll `condition` until it returns something true (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


_prepared: dict[tuple, Path] = {}  # (model, data files' digest) -> a closed project after one round, made once


def project_after_one_round(root: Path, data: Path, model: str | None = None) -> Path:
    """A project in `root` on the small SMS data (see conftest's small_pool), gold pool and test imported, one
    round done; closed, so subprocesses can use it. `model`: a model name instead of the default.

    On SQLite (the store inside the folder) the round is done once per session and data, and each caller gets a
    copy of that folder: a project's files hold no absolute path (its store, models, feature rows and embeddings
    are found relative to it), so the copy is the same project as one made in `root`. On PostgreSQL
    ($SYNTHLOOP_DB_URL: the rows live in the test's own database) it is made in place every time."""
    if os.environ.get("SYNTHLOOP_DB_URL"):
        return _one_round(root, data, model)
    digest = hashlib.sha256(b"".join((data / name).read_bytes() for name in ("task.toml", "pool.csv", "test.csv")))
    key = (model, digest.hexdigest())
    if key not in _prepared:
        # Under the system temp dir, not a test's tmp_path: pytest prunes old tmp_paths while a session runs.
        _prepared[key] = _one_round(Path(tempfile.mkdtemp(prefix="synthloop-prepared-")) / "p", data, model)
    shutil.copytree(_prepared[key], root, symlinks=True)
    return root


def remove_prepared_projects() -> None:
    """conftest.py calls this when the session ends."""
    for path in _prepared.values():
        shutil.rmtree(path.parent, ignore_errors=True)
    _prepared.clear()


def _one_round(root: Path, data: Path, model: str | None) -> Path:
    from synthloop import Project

    Project.init(root, data / "task.toml", loop={"batch_size": 10}, **({"model": {"name": model}} if model else {})).close()
    project = Project(root)
    project.import_file(data / "pool.csv", label_col="label", gold=True)
    project.import_file(data / "test.csv", label_col="label", split="test")
    project.round()
    project.close()
    return root
