"""What tests share besides fixtures: paths and the skip-or-fail rule. Import it as `from helpers import ...`;
conftest.py is pytest's, for fixtures, and is not imported by the tests themselves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sms_spam"
SHARED_DATA = ROOT.parent / "shared" / "data"


def skip_or_fail(reason: str) -> None:
    """Skip a test (or a whole module) whose tool (chromium, playwright, Argilla, Ray, llama.cpp) is missing,
    except under CI (`make test` sets CI=1): there a skip would hide that the test never ran."""
    import os

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


def project_after_one_round(root: Path, data: Path, model: str | None = None) -> Path:
    """A project in `root` on the small SMS data (see conftest's small_pool), gold pool and test imported, one
    round done; closed, so subprocesses can use it. `model`: a model name instead of the default."""
    from synthloop import Project

    Project.init(root, data / "task.toml", loop={"batch_size": 10}, **({"model": {"name": model}} if model else {})).close()
    project = Project(root)
    project.import_file(data / "pool.csv", label_col="label", gold=True)
    project.import_file(data / "test.csv", label_col="label", split="test")
    project.round()
    project.close()
    return root
