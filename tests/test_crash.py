"""kill -9 a real `synthloop round` at each step, re-run it, and check nothing was lost or queried twice."""

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import project_after_one_round

from synthloop import Project


def start(args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "synthloop", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def check_invariants(root, batch):
    """After any kill and resume: no label lost, no example queried twice, every round done with metrics,
    and the counts `status --json` prints equal the store's."""
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
    assert [r.number for r in rounds] == list(range(len(rounds)))
    assert all(r.status == "done" for r in rounds)
    missing = [r.number for r in rounds if not r.metrics or r.metrics.get("accuracy") is None]
    assert not missing, f"rounds without metrics: {missing}"
    assert all(r.model_version is not None for r in rounds)
    project.close()
    status = subprocess.run([sys.executable, "-m", "synthloop", "status", "--json", "--no-latency"], cwd=root,
                            capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["rounds"] == len(rounds) and info["queries"] == {"labeled": len(queries)}
    assert sum(sum(per_class.values()) for per_class in info["labels"].values()) == len(labeled)
    return len(rounds), len(queries)


@pytest.fixture
def proj(tmp_path, small_pool, db):  # db: SQLite; PostgreSQL too for the loop killed at every step
    return project_after_one_round(tmp_path / "p", small_pool)


@pytest.fixture
def tfidf_proj(tmp_path, small_pool, db):
    """The same on tfidf-lr, which embeds nothing: a kill at one step tests the round's resume, which is the same
    for every model; the loop test below kills the default model (and its embedding store) at every step."""
    return project_after_one_round(tmp_path / "p", small_pool, model="tfidf-lr")


# Every step boundary of a round (project.round and its checkpoint() calls), in order.
STEPS = ["collected", "model-stored", "trained", "augmented", "selected", "routed"]


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_each_step_then_resume(tfidf_proj, step):
    proj = tfidf_proj
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


@pytest.mark.both_stores
def test_kill_9_during_a_loop_at_every_step_of_different_rounds(proj):
    """A loop killed at each step in turn, each kill landing in a later round than the last: the runs
    resume one another's rounds, and the store ends whole."""
    kills = 0
    for k, step in enumerate(STEPS):
        # Each loop resumes the round the last one left, finishes it, and is killed in the next one.
        target = k + 2
        proc = start(["loop", "--rounds", "3", "--quiet"], proj, env={"SYNTHLOOP_PAUSE_AT": f"{step}@{target}"})
        line = proc.stdout.readline()
        assert line.startswith(f"PAUSED {step} {target}"), line + proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    finish = subprocess.run([sys.executable, "-m", "synthloop", "round"], cwd=proj, capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    rounds, queried = check_invariants(proj, 10)
    assert kills == len(STEPS) and queried == 10 * rounds
