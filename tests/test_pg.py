"""PostgreSQL only: how the URL is chosen and hidden, and a team's machines sharing one database.

The store's behaviour on both databases is tested by test_store.py, test_loop.py and test_crash.py (the
`db` fixture); here are the things only a server has: several project folders ("machines") writing one
database at the same time, passwords, a server that does not answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.engine import make_url

from synthloop import Project
from synthloop.store import Store

BATCH = 10


def cli(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "synthloop", *args], cwd=root, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err


def machines(tmp_path: Path, small_pool: Path, url: str, monkeypatch) -> tuple[Path, Path]:
    """Two project folders (two machines) on one database, the shared pool and test split imported once."""
    monkeypatch.setenv("SYNTHLOOP_DB_URL", url)
    roots = [tmp_path / "machine-a", tmp_path / "machine-b"]
    for root in roots:
        Project.init(root, small_pool / "task.toml", loop={"batch_size": BATCH}).close()
    project = Project(roots[0])
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    project.close()
    return roots[0], roots[1]


def check_shared_store(root: Path, n_rounds: int) -> Store:
    """What two machines working at once must leave behind: rounds numbered without gaps, one after another,
    every query once and labeled once, one model version per round."""
    project = Project(root)
    store = project.store
    rounds = store.rounds()
    assert [r.number for r in rounds] == list(range(n_rounds)) and {r.status for r in rounds} == {"done"}
    for before, after in zip(rounds, rounds[1:]):
        assert after.started_at >= before.finished_at, "two rounds ran at the same time"
    queries = store.queries()
    assert len(queries) == len({q.example_id for q in queries}) == BATCH * n_rounds
    assert {q.round: sum(1 for x in queries if x.round == q.round) for q in queries} == dict.fromkeys(range(n_rounds), BATCH)
    # The oracle skips texts without a gold label (the nightly's new files have none) and labels the rest.
    assert {q.status for q in queries} <= {"labeled", "skipped"}
    labeled = sorted(q.example_id for q in queries if q.status == "labeled")
    assert labeled and sorted(eid for eid, _, _, src in store.training_set() if src == "oracle") == labeled
    assert sum(n for src, _, n in store.label_counts() if src == "oracle") == len(labeled), "a label stored twice"
    versions = [r.model_version for r in rounds]
    # A loop ends with a model of every label (its own version, no round), trained under the writer lock too.
    latest = store.latest_model()
    assert len(set(versions)) == n_rounds and (latest.version == n_rounds or latest.round is None)
    return store


def test_two_machines_run_loops_at_the_same_time(tmp_path, small_pool, pg_url, monkeypatch):
    a, b = machines(tmp_path, small_pool, pg_url, monkeypatch)
    procs = [cli(root, "loop", "--rounds", "3", "--json") for root in (a, b)]
    results = [json.loads(finish(p)[0]) for p in procs]
    assert [len(r) for r in results] == [3, 3]
    numbers = sorted(r["number"] for result in results for r in result)
    assert numbers == list(range(6)), "each round was run by one machine"
    store = check_shared_store(a, 6)
    assert store.query_counts() == {"labeled": 60}
    # Each machine loaded the models the other trained (monitoring compares with the round before): from the store.
    for root in (a, b):
        assert len(list((root / ".synthloop" / "models").glob("v*.joblib"))) >= 3
    assert Project(b).predict(["WINNER! claim your prize now"])[0]["label"] in ("spam", "ham")


def test_two_machines_run_nightly_at_the_same_time(tmp_path, small_pool, example_dir, pg_url, monkeypatch):
    a, b = machines(tmp_path, small_pool, pg_url, monkeypatch)
    pool = pd.read_csv(example_dir / "pool.csv")
    incoming = {}
    for i, root in enumerate((a, b)):
        incoming[root] = root / "incoming"
        incoming[root].mkdir()
        # Overlapping files: rows 350-399 arrive on both machines, and are stored once.
        pool.iloc[300 + 50 * i:400 + 50 * i][["text"]].to_csv(incoming[root] / "day1.csv", index=False)
    before = sum(Store(pg_url).count_examples().values())
    procs = [cli(root, "nightly", "--pool", str(incoming[root]), "--max-labels", str(BATCH), "--json") for root in (a, b)]
    summaries = [json.loads(finish(p)[0]) for p in procs]
    assert sorted(s["round"] for s in summaries) == [0, 1]
    store = check_shared_store(a, 2)
    after = sum(store.count_examples().values())
    assert sum(s["imported"] for s in summaries) == after - before > 100, "an overlapping row was counted twice"
    assert all(s["imported"] > 0 for s in summaries)
    assert [r.status for r in store.runs("nightly")] == ["done", "done"], "one night marked the other's run killed"
    ids = [r.id for r in store.runs("nightly")]
    assert sorted(s["run"] for s in summaries) == sorted(ids)


def test_stores_made_at_once_on_an_empty_database(pg_url):
    """Machines starting together on a new database all create the tables: the schema lock makes that safe."""
    errors, barrier = [], threading.Barrier(4)

    def open_store():
        barrier.wait()
        try:
            Store(pg_url).close()
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = Store(pg_url)
    assert store.get_meta("schema_version") >= 2
    store.close()


def test_url_from_synthloop_toml_with_the_password_in_pgpassword(tmp_path, small_pool, pg_server, pg_url, monkeypatch):
    url = make_url(pg_url)
    monkeypatch.delenv("SYNTHLOOP_DB_URL", raising=False)
    monkeypatch.setenv("PGPASSWORD", url.password)
    without_password = url.set(password=None).render_as_string(hide_password=False)
    project = Project.init(tmp_path / "p", small_pool / "task.toml", store={"url": without_password})
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    project.close()
    assert "store" in (tmp_path / "p" / "synthloop.toml").read_text()
    assert not (tmp_path / "p" / ".synthloop" / "store.db").exists()
    reopened = Store(pg_url)
    assert len(reopened.test_set()[0]) == 200  # the rows went to the server
    reopened.close()


@pytest.mark.parametrize("fault", ["wrong password", "no server"])
def test_unreachable_store_is_one_line_with_the_password_masked(tmp_path, small_pool, pg_server, pg_url, fault):
    Project.init(tmp_path / "p", small_pool / "task.toml").close()
    url = make_url(pg_url)
    if fault == "wrong password":
        bad = url.set(password="not-" + url.password)
    else:
        bad = url.set(port=pg_server.port + 1 if pg_server.port < 65535 else 1024)
    bad_text = bad.render_as_string(hide_password=False)
    done = subprocess.run([sys.executable, "-m", "synthloop", "status"], cwd=tmp_path / "p", capture_output=True,
                          text=True, env={**os.environ, "SYNTHLOOP_DB_URL": bad_text}, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output
    assert bad.password not in output and url.password not in output
    assert "cannot reach the store at postgresql+psycopg://synthloop:***@127.0.0.1" in output
    assert ("password authentication failed" if fault == "wrong password" else "refused") in output


def test_a_url_that_is_not_a_database_is_refused_without_echoing_it(tmp_path, small_pool, monkeypatch):
    Project.init(tmp_path / "p", small_pool / "task.toml").close()
    secret = "mongodb://admin:hunter2@db:27017/x"
    done = subprocess.run([sys.executable, "-m", "synthloop", "status"], cwd=tmp_path / "p", capture_output=True,
                          text=True, env={**os.environ, "SYNTHLOOP_DB_URL": secret}, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output and "hunter2" not in output
    assert "synthloop stores in sqlite or postgresql" in output
