"""`kill -9` of a nightly run that started a local Ray: the next run reaps what that Ray left behind
(a real `synthloop nightly --engine ray` subprocess, stopped while its Ray is up, then killed)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import skip_or_fail, wait_for

if importlib.util.find_spec("ray") is None:
    skip_or_fail("ray is not installed: pip install -e '.[ray]'")
if not Path("/proc").is_dir():
    pytest.skip("reaping reads /proc (Linux)", allow_module_level=True)

from synthloop.learn.ray_local import NOTE, marked

ROOT = Path(__file__).resolve().parent.parent


def nightly(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "synthloop", "nightly", "-p", str(root), *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full)



def settled(token: str, quiet: float = 4.0, timeout: float = 60.0) -> list:
    """The marked processes once the set has not changed for `quiet` seconds: Ray's processes that notice the dead
    driver exit on their own within seconds (under load, later than any fixed sleep), and a next run that found
    them already gone would have nothing to reap or report."""
    deadline = time.monotonic() + timeout
    last, since = marked(token), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = marked(token)
        if sorted(now) != sorted(last):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def test_a_killed_runs_local_ray_is_reaped_by_the_next_run(project, small_pool):
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    root = project.root
    first = nightly(root, "--engine", "ray", "--max-labels", "5", env={"SYNTHLOOP_PAUSE_AT": "ray-started"})
    try:
        line = first.stdout.readline()
        assert line.startswith("PAUSED ray-started"), line + first.stderr.read()
        note = json.loads((project.state_dir / NOTE).read_text())
        assert note["pid"] == first.pid
        ours = wait_for(lambda: marked(note["token"]), 60, "the Ray processes the run started", every=0.5)
        assert len(ours) >= 2, ours  # at least the GCS and the raylet
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    left = settled(note["token"])  # what dies with the driver has died; the rest is what this test is about
    again = nightly(root, "--json")  # an ordinary run, without Ray: it reaps the dead run's
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert json.loads(out)["status"] == "done"
    wait_for(lambda: not marked(note["token"]), 30, f"the leftovers {left} to be gone", every=0.5)
    assert not (project.state_dir / NOTE).exists()
    if left:  # what the kill left (Ray's agents, adopted by init) was killed by the next run, and it says so
        assert "processes of a local Ray that run synthloop" in err, err
