"""The nightly job: only new work on a second run, the lock, kill -9 and re-run, budgets, dry run."""

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
from llm_servers import FaultServer

from synthloop import Project
from synthloop.nightly import run_nightly


@pytest.fixture
def nightly_project(project, small_pool, example_dir, tmp_path):
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    pool = pd.read_csv(example_dir / "pool.csv")
    pool.iloc[300:400][["text"]].to_csv(incoming / "day1.csv", index=False)
    project.extra = pool.iloc[400:450][["text"]]
    return project, incoming


def new_count(project, texts) -> int:
    from synthloop.data import example_id

    ids = {example_id(t.strip()) for t in texts}
    return len(ids - set(project.store.existing_ids(ids)))


def test_second_run_only_does_new_work(nightly_project, monkeypatch):
    project, incoming = nightly_project
    expected = new_count(project, pd.read_csv(incoming / "day1.csv").text)
    first = run_nightly(project, str(incoming), max_labels=10)
    assert first["new_files"] == 1 and first["imported"] == expected > 90 and first["retrained"] and first["queried"] == 10
    unlabeled = len(project.store.unlabeled_pool()[0])
    assert first["scored"] == unlabeled + 10  # everything was new

    # From now on the labeler answers nothing (an LLM that fails), so no new label changes the model.
    server = FaultServer()
    server.reset(("500",))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    project.config.llm.base_url, project.config.llm.max_retries = server.base_url, 0
    project.config.llm.response_format = "json_object_schema"
    try:
        second = run_nightly(project, str(incoming), max_labels=5, labeler="llm")
        assert second["new_files"] == 0 and second["retrained"] and second["queried"] == 5
        assert second["scored"] == unlabeled  # the model changed: its candidates were re-scored

        third = run_nightly(project, str(incoming), max_labels=5, labeler="llm")
        assert third["new_files"] == 0 and not third["retrained"] and third["scored"] == 0 and third["queried"] == 5
        assert third["model_version"] == second["model_version"]

        project.extra.to_csv(incoming / "day2.csv", index=False)
        expected = new_count(project, project.extra.text)
        fourth = run_nightly(project, str(incoming), max_labels=5, labeler="llm")
        assert fourth["new_files"] == 1 and fourth["imported"] == expected > 40 and not fourth["retrained"]
        assert fourth["scored"] == expected and fourth["queried"] == 5  # only the new examples were scored
    finally:
        server.stop()
    runs = project.store.runs("nightly")
    assert [r["status"] for r in runs] == ["done"] * 4
    assert (project.state_dir / "reports" / "nightly-0004.md").read_text().startswith("# Nightly run 4")
    assert "run 4 done" in (project.state_dir / "logs" / "nightly.log").read_text()


def test_dry_run_changes_nothing(nightly_project):
    project, incoming = nightly_project
    before = project.store.count_examples()
    plan = run_nightly(project, str(incoming), dry_run=True)
    assert plan["dry_run"] and len(plan["new_files"]) == 1 and plan["retrain"]
    assert project.store.count_examples() == before and project.store.runs() == [] and project.store.rounds() == []


def nightly_cli(root, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "synthloop", "nightly", *args], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def test_lock_then_kill_9_then_rerun(nightly_project):
    project, incoming = nightly_project
    root = project.root
    first = nightly_cli(root, "--pool", str(incoming), env={"SYNTHLOOP_PAUSE_AT": "selected"})
    line = first.stdout.readline()
    assert line.startswith("PAUSED selected"), line + first.stderr.read()

    second = nightly_cli(root, "--pool", str(incoming))
    _, err = second.communicate(timeout=60)
    assert second.returncode == 75 and "another synthloop run holds" in err

    first.send_signal(signal.SIGKILL)
    first.wait()
    again = nightly_cli(root, "--pool", str(incoming), "--json")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    summary = json.loads(out)
    assert summary["imported"] == 0  # the killed run had imported the file already
    reopened = Project(root)
    queries = reopened.store.queries()
    # The re-run finished the killed run's round: its 10 queries handed out once, none selected twice.
    assert len(queries) == len({q.example_id for q in queries}) == 10
    assert summary["round"] == 0 and {q.status for q in queries} <= {"labeled", "skipped"}
    assert [r["status"] for r in reopened.store.runs("nightly")] == ["killed", "done"]


def test_llm_budget_stops_before_it_is_exceeded(nightly_project, monkeypatch):
    from synthloop.labelers.llm import estimated_cost, few_shot_examples, labeling_messages

    project, incoming = nightly_project
    server = FaultServer()
    server.reset(("content", '{"label": "spam", "confidence": 0.9}'))
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        project.config.llm.base_url = server.base_url
        project.config.llm.model = "gpt-4o"
        project.config.llm.response_format = "json_object_schema"
        ids, texts = project.store.unlabeled_pool()
        shots = few_shot_examples(project, project.config.llm.few_shot)
        budget = 3.5 * max(estimated_cost(project, labeling_messages(project.task, t, shots)) for t in texts)
        summary = run_nightly(project, None, max_labels=10, max_cost=budget, labeler="llm")
        assert summary["queried"] == 10
        # What the guard should have allowed: queries in order while their estimates fit the budget.
        costs = [estimated_cost(project, labeling_messages(project.task, q.text, shots)) for q in project.store.queries()]
        allowed = next(k for k in range(len(costs) + 1) if k == len(costs) or sum(costs[:k + 1]) > budget)
        assert 3 <= allowed < 10
        labeled = [r for r in project.store.training_set() if r[3].startswith("llm:")]
        assert len(labeled) == allowed and len(server.requests) == allowed
        assert summary["pending"] == 10 - allowed and 0 < summary["llm_cost"] <= budget
    finally:
        server.stop()


def test_max_labels_caps_the_queries(nightly_project):
    project, incoming = nightly_project
    assert run_nightly(project, str(incoming), max_labels=3)["queried"] == 3
