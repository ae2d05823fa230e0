"""One writer at a time: real `synthloop` processes on one project, the project lock between them."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import project_after_one_round

from synthloop import Project


def start(args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "synthloop", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def run(args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "synthloop", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def paused(args, cwd, step):
    """A real process stopped at a checkpoint, holding the lock."""
    proc = start(args, cwd, env={"SYNTHLOOP_PAUSE_AT": step})
    line = proc.stdout.readline()
    assert line.startswith(f"PAUSED {step}"), line + proc.stderr.read()
    return proc


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def rounds_of(root):
    project = Project(root)
    try:
        return project.store.rounds()
    finally:
        project.close()


@pytest.fixture
def proj(tmp_path, small_pool):
    return project_after_one_round(tmp_path / "p", small_pool)


def test_a_second_writer_is_refused_with_the_holder_named_and_exit_75(proj):
    first = paused(["round"], proj, "trained")
    try:
        for args in (["round"], ["loop", "--rounds", "2"], ["train"], ["query"], ["label"],
                     ["import", proj / "nothing.csv"], ["nightly"], ["report", "--no-latency"], ["generate"],
                     ["review", "push"], ["review", "pull"]):
            proc = run(args, proj)
            assert proc.returncode == 75, (args, proc.stderr)
            assert f"pid {first.pid}" in proc.stderr and "`synthloop round`" in proc.stderr and "since" in proc.stderr
            assert "--wait" in proc.stderr and "Traceback" not in proc.stderr
        # Readers never wait for the lock.
        status = run(["status", "--json", "--no-latency"], proj)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["rounds"] == 2
    finally:
        kill(first)


def test_the_lock_of_a_killed_holder_is_taken_over_by_a_waiting_run(proj):
    first = paused(["round"], proj, "trained")
    waiting = start(["round", "--wait", "300", "--json"], proj)
    kill(first)  # kill -9: the OS drops its lock, the waiting run takes it and resumes round 1
    out, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, err
    assert json.loads(out)["number"] == 1 and json.loads(out)["resumed"] is True
    assert [r.status for r in rounds_of(proj)] == ["done", "done"]


def test_round_beside_round_gives_two_rounds_or_one_clear_refusal(proj):
    procs = [start(["round", "--json"], proj) for _ in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    for p, _out, err in results:
        assert "Traceback" not in err and p.returncode in (0, 75), err
        if p.returncode == 75:
            assert "another synthloop run holds" in err and "`synthloop round`" in err
    rounds = rounds_of(proj)
    assert len(rounds) == 1 + codes.count(0)  # round 0 from the fixture, one per run that got the lock
    assert all(r.status == "done" and r.metrics for r in rounds)
    assert len({json.loads(out)["number"] for p, out, _ in results if p.returncode == 0}) == codes.count(0)


def test_two_loops_that_wait_make_all_their_rounds(proj):
    procs = [start(["loop", "--rounds", "3", "--quiet", "--wait", "600", "--json"], proj) for _ in range(2)]
    numbers = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        numbers += [r["number"] for r in json.loads(out)]
    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]
    rounds = rounds_of(proj)
    assert len(rounds) == 7 and all(r.status == "done" and r.metrics for r in rounds)


def test_the_lock_file_names_nobody_once_the_holder_is_done(proj):
    from synthloop.loop.lock import holder, project_lock

    with project_lock(proj / ".synthloop", "test"):
        info = holder(proj / ".synthloop" / "lock")
        assert info["pid"] == os.getpid() and info["command"] == "test"
        with project_lock(proj / ".synthloop", "nested"):  # the same process: no deadlock with itself
            pass
    assert holder(proj / ".synthloop" / "lock") is None


def _as_nobody():
    """Run a command as an unprivileged user: root ignores file permissions, so a read-only check as root
    proves nothing. Not root: chmod alone is the check."""
    if os.geteuid() != 0:
        return []
    import shutil

    if shutil.which("setpriv") is None:  # util-linux, on every Debian machine
        pytest.fail("setpriv (util-linux) is needed to run as an unprivileged user")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_readers_work_on_a_read_only_project_and_writers_say_why_they_cannot(proj, tmp_path):
    import shutil
    import stat
    import tempfile

    # A folder every user may read (pytest's own tmp folder is root's alone), then everything read-only.
    shared = Path(tempfile.mkdtemp(prefix="synthloop-ro-"))
    try:
        os.chmod(shared, 0o755)
        root = shared / "p"
        shutil.copytree(proj, root)
        writable = shared / "out"
        writable.mkdir()
        os.chmod(writable, 0o777)
        for path in [root, *root.rglob("*")]:
            mode = path.stat().st_mode
            os.chmod(path, (mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH) & ~0o222
                     | (0o111 if path.is_dir() else 0))
        env = {**os.environ, "HOME": str(writable), "MPLCONFIGDIR": str(writable)}
        prefix = _as_nobody()

        def as_user(*args):
            return subprocess.run([*prefix, sys.executable, "-m", "synthloop", *map(str, args)], cwd=writable,
                                  capture_output=True, text=True, env=env, timeout=600)

        status = as_user("status", "--json", "-p", root)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["rounds"] == 1
        predicted = as_user("predict", "WIN a free prize now", "hello mum", "--json", "-p", root)
        assert predicted.returncode == 0, predicted.stderr
        assert len(json.loads(predicted.stdout)) == 2
        exported = as_user("export", writable / "labeled.csv", "--json", "-p", root)
        assert exported.returncode == 0, exported.stderr
        assert json.loads(exported.stdout)["rows"] == 10
        refused = as_user("round", "-p", root)
        assert refused.returncode == 2 and "read-only" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        for path in [shared, *shared.rglob("*")]:
            os.chmod(path, 0o755)
        shutil.rmtree(shared, ignore_errors=True)
