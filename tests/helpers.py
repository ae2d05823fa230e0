"""What tests share besides fixtures: paths and the skip-or-fail rule. Import it as `from helpers import ...`;
conftest.py is pytest's, for fixtures, and is not imported by the tests themselves."""

from __future__ import annotations

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
