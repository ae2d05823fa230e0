"""kill -9 a real `synthloop round` at each step, re-run it, and check nothing was lost or queried twice."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from synthloop import Project


def start(args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "synthloop", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def check_invariants(root, batch):
    project = Project(root)
    store = project.store
    queries = store.queries()
    assert len({q.example_id for q in queries}) == len(queries), "an example was queried twice"
    per_round = {}
    for q in queries:
        per_round[q.round] = per_round.get(q.round, 0) + 1
    assert all(n <= batch for n in per_round.values()), per_round
    labeled = {row[0] for row in store.training_set()}
    for q in queries:
        assert q.status == "labeled" and q.example_id in labeled, f"label lost for {q}"
    assert len(labeled) == len(queries)
    rounds = store.rounds()
    assert [r["number"] for r in rounds] == list(range(len(rounds)))
    assert all(r["status"] == "done" for r in rounds)
    project.close()
    return len(rounds), len(queries)


@pytest.fixture
def proj(tmp_path, small_pool, db):  # db: on SQLite and on PostgreSQL
    Project.init(tmp_path / "p", small_pool / "task.toml", loop={"batch_size": 10}).close()
    project = Project(tmp_path / "p")
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    project.round()
    project.close()
    return tmp_path / "p"


@pytest.mark.parametrize("step", ["collected", "trained", "selected", "routed"])
def test_kill_9_at_each_step_then_resume(proj, step):
    proc = start(["round"], proj, env={"SYNTHLOOP_PAUSE_AT": step})
    line = proc.stdout.readline()
    assert line.startswith(f"PAUSED {step} 1"), line + proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    done = subprocess.run([sys.executable, "-m", "synthloop", "round", "--json"], cwd=proj, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '"resumed": true' in done.stdout and '"number": 1' in done.stdout
    assert check_invariants(proj, 10) == (2, 20)


def test_kill_9_at_random_moments_during_a_loop(proj):
    rng = random.Random(0)
    for _ in range(6):
        proc = start(["loop", "--rounds", "3", "--quiet"], proj)
        time.sleep(rng.uniform(0.5, 3.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finish = subprocess.run([sys.executable, "-m", "synthloop", "round"], cwd=proj, capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    rounds, queried = check_invariants(proj, 10)
    assert rounds >= 2 and queried == 10 * rounds
