"""The query lifecycle: one QueryStatus, transitions in the store, labelers that return outcomes and write
nothing, failure reasons in `status`, `synthloop requeue`, and typos refused before anything is stored."""

from __future__ import annotations

import json

import pytest
from forkserver import run_synthloop
from llm_servers import FaultServer

from synthloop import Project, SynthloopError
from synthloop.labelers import LABELERS, get_labeler
from synthloop.labelers.base import Labeler
from synthloop.store import QueryStatus

SECRET = "sk-test-queries"


def cli(*args, cwd=None):
    return run_synthloop(*args, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def server():
    srv = FaultServer()
    yield srv
    srv.stop()


@pytest.fixture
def loaded(project, small_pool):
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    return project


@pytest.fixture
def llm_project(loaded, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cfg = loaded.config.llm
    cfg.base_url, cfg.model, cfg.response_format, cfg.timeout, cfg.max_retries = (
        server.base_url, "gpt-4o-mini", "json_object_schema", 1.0, 0)
    return loaded


def test_every_labeler_declares_the_whole_interface(loaded):
    from synthloop.labelers.argilla import ArgillaUnreachable

    labelers = {name: get_labeler(name, loaded.label_context()) for name in LABELERS}
    assert [name for name, labeler in labelers.items() if not isinstance(labeler, Labeler)] == []
    # What a round logs and goes on from: only Argilla being down defers; every other failure is a query's outcome.
    assert {name: labeler.defers_on for name, labeler in labelers.items()} == {
        name: (ArgillaUnreachable,) if name == "argilla" else () for name in LABELERS}


def test_a_labeler_typo_is_refused_before_anything_is_stored(loaded):
    root = loaded.root
    loaded.close()
    result = cli("round", "--labeler", "orcale", "--project", str(root))
    assert result.returncode == 2 and "unknown labeler 'orcale'" in result.stderr and "Traceback" not in result.stderr
    again = Project(root)
    try:
        assert again.store.queries() == [] and again.store.rounds() == [] and again.store.latest_model() is None
        assert again.round().queried == 10  # the project is not poisoned
    finally:
        again.close()


@pytest.mark.parametrize("option, value, message", [
    ("--labeler", "orcale", "unknown labeler 'orcale'"),
    ("--model", "tfidf-rl", "unknown model 'tfidf-rl'"),
    ("--strategy", "margn", "unknown strategy 'margn'"),
])
def test_init_refuses_unknown_choices_and_writes_nothing(tmp_path, example_dir, option, value, message):
    result = cli("init", str(tmp_path / "p"), "--task", str(example_dir / "task.toml"), option, value)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "p" / "synthloop.toml").exists()


def test_round_refuses_an_unknown_strategy_or_a_config_typo_before_opening_a_round(loaded):
    with pytest.raises(SynthloopError, match="unknown strategy 'margn'"):
        loaded.round(strategy="margn")
    with pytest.raises(SynthloopError, match="cannot be streamed"):
        loaded.round(strategy="random", engine="local")
    loaded.config.loop.labeler = "orcale"  # edited by hand in synthloop.toml
    with pytest.raises(SynthloopError, match=r"unknown labeler 'orcale'.*\[loop\] labeler"):
        loaded.round()
    assert loaded.store.rounds() == [] and loaded.store.queries() == []


def test_failures_keep_their_reason_status_shows_them_and_requeue_makes_them_selectable(llm_project, server):
    server.reset(("content", '{"label": "eggs", "confidence": 0.9}'))  # a label outside the task
    llm_project.round(labeler="llm")
    failed = llm_project.store.queries(status=QueryStatus.FAILED)
    assert len(failed) == 10 and all(q.reason.startswith("llm: answer off the schema") for q in failed)
    reasons = llm_project.status(measure_latency=False)["query_reasons"]
    assert sum(reasons["failed"].values()) == 10 and all(r.startswith("llm: answer off the schema") for r in reasons["failed"])
    unlabeled = set(llm_project.store.unlabeled_pool()[0])
    assert not unlabeled & {q.example_id for q in failed}  # failed: never selected again, until requeued

    root = llm_project.root
    llm_project.close()
    shown = cli("status", "--no-latency", "--project", str(root))
    assert shown.returncode == 0 and "failed: 10 llm: answer off the schema" in " ".join(shown.stdout.split())
    result = cli("requeue", "--failed", "--json", "--project", str(root))
    assert result.returncode == 0, result.stderr
    assert sum(json.loads(result.stdout)["requeued"].values()) == 10
    again = Project(root)
    try:
        assert again.store.query_counts() == {}
        assert {q.example_id for q in failed} <= set(again.store.unlabeled_pool()[0])
    finally:
        again.close()


def test_skipped_queries_requeue_only_when_asked(loaded):
    loaded.round(route=False)
    chosen = [q.example_id for q in loaded.store.queries()]
    # Gold hidden from the oracle for three of them: skipped, with the reason.
    from synthloop.store import examples

    with loaded.store.engine.begin() as conn:
        conn.execute(examples.update().where(examples.c.id.in_(chosen[:3])).values(gold=None))
    loaded.label()
    assert loaded.store.query_counts() == {"labeled": 7, "skipped": 3}
    assert loaded.store.query_reasons() == {"skipped": {"no gold label": 3}}
    assert loaded.requeue(failed=True)["requeued"] == {}  # only failed asked: the skipped stay
    assert loaded.requeue(skipped=True)["requeued"] == {"skipped: no gold label": 3}
    assert set(chosen[:3]) <= set(loaded.store.unlabeled_pool()[0]) and loaded.store.query_counts() == {"labeled": 7}


def test_requeue_reroutes_pending_queries_of_a_labeler_that_no_longer_exists(loaded):
    ids, _ = loaded.store.unlabeled_pool()
    loaded.store.open_round()
    loaded.store.add_queries(0, [(i, 0.5) for i in ids[:5]], "margin", routed_to="orcale")  # an older version's typo
    root = loaded.root
    loaded.close()
    result = cli("requeue", "--labeler", "oracle", "--project", str(root))
    assert result.returncode == 0 and "5 pending queries of unknown labelers now go to oracle" in result.stdout
    assert cli("requeue", "--labeler", "crowd", "--project", str(root)).returncode == 2
    again = Project(root)
    try:
        assert {q.routed_to for q in again.store.queries()} == {"oracle"}
        result = again.round()
        assert result.number == 0 and result.labels_collected == 5  # the leftovers are labeled, the round closes
    finally:
        again.close()


def test_hybrid_collect_hands_off_and_writes_nothing_the_round_reroutes(llm_project, server, monkeypatch):
    llm_project.round()  # a model, so the router has the model's predictions
    monkeypatch.setenv("ARGILLA_API_KEY", "argilla.apikey")
    llm_project.config.argilla.api_url = "http://127.0.0.1:9"  # nothing listens: Argilla is down
    llm_project.config.argilla.retries = 0
    llm_project.round(route=False, labeler="hybrid")
    ids = [q.example_id for q in llm_project.store.queries(status="pending")]
    llm_project.store.mark_submitted(ids)
    server.reset(("content", '{"label": "ham", "confidence": 0.1}'))  # too unsure: for reviewers
    before = llm_project.store.queries(status="pending")

    collected = get_labeler("hybrid", llm_project.label_context()).collect()
    assert set(collected.handoff) == set(ids) and collected.labels == []
    assert {to for to, _ in collected.handoff.values()} == {"argilla"}
    assert llm_project.store.queries(status="pending") == before  # the labeler wrote nothing

    assert llm_project.collect() == 0  # the round applies it: rerouted; the push fails and they wait
    after = llm_project.store.queries(status="pending")
    assert {q.routed_to for q in after} == {"argilla"} and all(q.submitted_at is None for q in after)
    assert {q.meta["llm"]["reason"] for q in after} == {"llm-unsure"}
