"""Step boundaries a test can stop a real process at: the kill tests pause a round (or a nightly run, or the Ray
engine) at a named step and kill -9 it there, to prove the next command resumes."""

from __future__ import annotations

import os
import time


def checkpoint(step: str, number: int) -> None:
    """Pause here forever if $SYNTHLOOP_PAUSE_AT names this step (or this step of this round); else nothing."""
    if os.environ.get("SYNTHLOOP_PAUSE_AT") in (step, f"{step}@{number}"):
        print(f"PAUSED {step} {number}", flush=True)
        time.sleep(3600)
