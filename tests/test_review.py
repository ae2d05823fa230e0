"""Human review in Argilla against the real local argilla-server (argilla_setup/): push, responses submitted
as annotators through the REST API the UI uses, pull, majority and ties, the hybrid router, a server killed
mid-push, the CLI, and one real browser session in the review UI."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import threading
from pathlib import Path

import pytest
from argilla_server import argilla_server_skip_reason, start_argilla_server
from forkserver import run_synthloop
from helpers import skip_or_fail

_reason = argilla_server_skip_reason() or (None if importlib.util.find_spec("argilla") else
                                           "the argilla SDK is not installed in this venv (pip install argilla)")
if _reason:
    skip_or_fail(_reason)
import argilla as rg  # noqa: E402
import httpx  # noqa: E402

from synthloop import Project, SynthloopError  # noqa: E402
from synthloop.labelers.argilla_sdk import ArgillaUnreachable, retryable  # noqa: E402
from synthloop.labelers.llm import Outcome  # noqa: E402
from synthloop.labelers.router import decide  # noqa: E402
from synthloop.llm.quoting import unquote  # noqa: E402
from synthloop.loop import review  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sms_spam"
CHROMIUM = Path("/usr/bin/chromium")
ANNOTATORS = ["alice", "bob", "carol"]
CLOSED = "http://127.0.0.1:9"  # nothing listens there: a server that is down


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_argilla_server(tmp_path_factory.mktemp("argilla"), annotators=ANNOTATORS) as srv:
        yield srv


@pytest.fixture
def argilla_env(server, monkeypatch):
    monkeypatch.setenv("ARGILLA_API_URL", server.url)
    monkeypatch.setenv("ARGILLA_API_KEY", server.api_key)
    return server


def make_project(path: Path, small_pool: Path, **argilla) -> Project:
    # One dataset per test: they share the module's server.
    settings = {"dataset": path.parent.name[:40].replace("_", "-"), "annotators": ANNOTATORS, "retry_wait": 0.2,
                **argilla}
    project = Project.init(path, EXAMPLE / "task.toml", loop={"batch_size": 10, "labeler": "argilla", "strategy": "margin"},
                           argilla=settings)
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    return project


@pytest.fixture
def proj(tmp_path, small_pool, argilla_env):
    project = make_project(tmp_path / "proj", small_pool)
    yield project
    project.close()


def dataset_of(server, project):
    client = rg.Argilla(api_url=server.url, api_key=server.api_key)
    return client.datasets(project.config.argilla.dataset, workspace=project.config.argilla.workspace)


def server_ids(server, project) -> dict[str, str]:
    """example id (= record id) -> Argilla's own record UUID, which the response endpoint takes."""
    return {str(r.id): str(r._server_id) for r in dataset_of(server, project).records()}


def respond(server, user: str, record_uuid: str, label: str | None, status: str = "submitted") -> None:
    values = {} if label is None else {"label": {"value": label}}
    r = httpx.post(f"{server.url}/api/v1/records/{record_uuid}/responses", json={"values": values, "status": status},
                   headers={"X-Argilla-Api-Key": server.annotators[user]})
    assert r.status_code == 201, r.text


def label_rows(project) -> list[tuple]:
    import sqlalchemy as sa

    with project.store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "select example_id, label, source, confidence, meta from labels order by example_id, source"))]


# ------------------------------------------------------------------------------------------------------ push
def test_round_pushes_records_with_suggestions_and_metadata_once(proj, argilla_env):
    from synthloop.learn import active

    proj.config.argilla.suggest_min_confidence = 0.0  # every guess pre-selected (test_review_queue.py: the bar)
    result = proj.round()
    assert result.queried == 10 and result.labels_collected == 0
    queries = proj.store.queries()
    assert all(q.routed_to == "argilla" and q.submitted_at and q.status == "pending" for q in queries)

    dataset = dataset_of(argilla_env, proj)
    records = list(dataset.records(with_suggestions=True))
    assert sorted(str(r.id) for r in records) == sorted(q.example_id for q in queries)
    by_id = {q.example_id: q for q in queries}
    _, model = proj.load_model()
    proba = model.predict_proba([q.text for q in queries])
    margin = dict(zip(by_id, active.uncertainty("margin", proba)))
    guess = {eid: (str(model.classes_[p.argmax()]), float(p.max())) for eid, p in zip(by_id, proba)}
    for record in records:
        query = by_id[str(record.id)]
        assert record.fields["text"] == query.text
        suggestion = record.suggestions["label"]
        label, confidence = guess[query.example_id]  # the model's own guess, and its probability as the score
        assert suggestion.value == label and suggestion.score == pytest.approx(confidence, abs=5e-4)  # sent rounded to 3 places
        assert suggestion.agent == "synthloop-model"
        assert "**Model:**" in record.fields["hints"]
        assert record.metadata["round"] == 0 and record.metadata["strategy"] == "margin"
        assert record.metadata["origin"] == "pool"
        assert record.metadata["uncertainty"] == pytest.approx(margin[query.example_id], abs=5e-4)  # 3 digits
    settings = dataset.settings
    assert list(settings.questions["label"].labels) == ["ham", "spam"]
    for label in proj.task.labels:
        assert f"- **{label.name}**: {label.description}" in settings.guidelines
    assert {u.username for u in rg.Argilla(api_url=argilla_env.url, api_key=argilla_env.api_key)
            .workspaces("synthloop").users} >= set(ANNOTATORS)

    again = review.push(proj)  # the same records again: updated, not added
    assert again.pushed == 10
    assert len(list(dataset_of(argilla_env, proj).records())) == 10


def test_dataset_with_other_labels_is_refused(tmp_path, small_pool, argilla_env):
    first = make_project(tmp_path / "a", small_pool, dataset="clash")
    first.round()
    other = Project.init(tmp_path / "b", _task_file(tmp_path), loop={"labeler": "argilla"},
                         argilla={"dataset": "clash"})
    other.import_file(small_pool / "pool.csv")
    other.round(route=False)
    with pytest.raises(SynthloopError, match="set \\[argilla\\] dataset to a new name"):
        review.push(other)


def _task_file(tmp_path: Path) -> Path:
    path = tmp_path / "other-task.toml"
    path.write_text('[task]\nname = "moods"\ndescription = "The mood of a message"\n'
                    '[[task.labels]]\nname = "happy"\ndescription = "glad"\nexamples = ["great news, thanks!"]\n'
                    '[[task.labels]]\nname = "sad"\ndescription = "unhappy"\nexamples = ["this is awful"]\n')
    return path


def test_missing_key_and_unreachable_server_are_clear_errors(proj, argilla_env, monkeypatch):
    proj.round(route=False)
    monkeypatch.delenv("ARGILLA_API_KEY")
    with pytest.raises(SynthloopError, match="set \\$ARGILLA_API_KEY"):
        review.push(proj)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_env.api_key)
    monkeypatch.setenv("ARGILLA_API_URL", CLOSED)
    proj.config.argilla.retries = 1
    with pytest.raises(SynthloopError, match="did not answer .* after 2 tries.*make argilla"):
        review.push(proj)
    assert all(q.submitted_at is None for q in proj.store.queries())


def test_retryable_errors():
    from argilla._exceptions import ArgillaAPIError

    assert retryable(httpx.ConnectError("refused"))
    assert retryable(ArgillaAPIError("boom", status_code=503))
    assert not retryable(ArgillaAPIError("bad request", status_code=422))
    assert not retryable(ArgillaAPIError("no response at all", status_code=None))  # no TypeError
    assert not retryable(ValueError("not a connection problem"))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "synthloop" and r.levelno == logging.WARNING]


def test_rounds_go_on_while_argilla_is_down_and_catch_up_once_it_is_back(proj, argilla_env, monkeypatch, caplog):
    proj.config.argilla.retries = 1
    monkeypatch.setenv("ARGILLA_API_URL", CLOSED)
    with caplog.at_level(logging.WARNING, logger="synthloop"):
        first = proj.round()
    assert first.queried == 10 and proj.store.round(first.number).status == "done"
    assert all(q.status == "pending" and q.submitted_at is None for q in proj.store.queries())
    assert _warnings(caplog) == [f"Argilla at {CLOSED} did not answer (connect) after 2 tries: ConnectError; "
                                 "10 queries stay pending and go out with the next round or `synthloop review push`"]

    # Back: the next round sends its own queries and the ones the first could not.
    monkeypatch.setenv("ARGILLA_API_URL", argilla_env.url)
    proj.round()
    ids = server_ids(argilla_env, proj)
    assert set(ids) == {q.example_id for q in proj.store.queries()} and len(ids) == 20
    assert all(q.submitted_at for q in proj.store.queries())
    answered = next(q.example_id for q in proj.store.queries() if q.round == first.number)
    respond(argilla_env, "alice", ids[answered], "spam")

    # Down again: collecting fails too, and the round still finishes; the label waits on the server.
    monkeypatch.setenv("ARGILLA_API_URL", CLOSED)
    proj.unreachable.clear()  # as if the first outage were long past: this round's first step waits again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="synthloop"):
        third = proj.round()
    assert third.labels_collected == 0 and proj.store.round(third.number).status == "done"
    assert f"Argilla at {CLOSED} did not answer (connect) after 2 tries: ConnectError; its labels wait for a " \
           "later round or `synthloop review pull`" in _warnings(caplog)
    # The step that found it down waited through the retries; the round's later steps tried once each.
    assert sum("retrying" in r.getMessage() for r in caplog.records if r.name == "synthloop.argilla") == 1
    assert f"Argilla at {CLOSED} did not answer (connect) after 1 try: ConnectError; 10 queries stay pending " \
           "and go out with the next round or `synthloop review push`" in _warnings(caplog)
    assert proj.store.query_counts() == {"pending": 30}

    monkeypatch.setenv("ARGILLA_API_URL", argilla_env.url)
    pulled = review.pull(proj)
    assert (pulled.added, pulled.examples) == (1, 1)
    assert [r for r in proj.store.training_set() if r[0] == answered][0][2:] == ("spam", "human:alice")
    assert review.push(proj).pushed == 29
    assert len(server_ids(argilla_env, proj)) == 30 and all(q.submitted_at for q in proj.store.queries())


# ------------------------------------------------------------------------------------------------------ pull
def test_pull_takes_submitted_responses_only_and_twice_adds_nothing(proj, argilla_env):
    proj.round()
    ids = server_ids(argilla_env, proj)
    example_ids = sorted(ids)
    gold = proj.store.gold_for(example_ids)
    for eid in example_ids[:3]:
        respond(argilla_env, "alice", ids[eid], gold[eid])
    respond(argilla_env, "alice", ids[example_ids[3]], "spam", status="draft")
    respond(argilla_env, "alice", ids[example_ids[4]], None, status="discarded")

    first = review.pull(proj)
    assert (first.added, first.examples, first.ties) == (3, 3, [])
    rows = label_rows(proj)
    assert [(r[0], r[1], r[2]) for r in rows] == [(eid, gold[eid], "human:alice") for eid in example_ids[:3]]
    assert proj.store.query_counts() == {"labeled": 3, "pending": 7}

    second = review.pull(proj)
    assert second.added == 0 and len(label_rows(proj)) == 3

    # The next round trains on the human labels and asks new questions.
    result = proj.round()
    assert result.n_labels == 3 and result.queried == 10
    assert {src for *_, src in proj.store.training_set() if src.startswith("human")} == {"human:alice"}


def test_several_annotators_majority_ties_and_waiting(tmp_path, small_pool, argilla_env):
    project = make_project(tmp_path / "proj", small_pool, min_submitted=2)
    project.round()
    ids = server_ids(argilla_env, project)
    a, b, c = sorted(ids)[:3]
    respond(argilla_env, "alice", ids[a], "spam")
    respond(argilla_env, "bob", ids[a], "spam")
    respond(argilla_env, "alice", ids[b], "spam")
    respond(argilla_env, "bob", ids[b], "ham")
    respond(argilla_env, "alice", ids[c], "ham")  # one response of the two this dataset needs

    result = review.pull(project)
    assert result.examples == 1 and result.added == 2 and result.ties == [b] and result.waiting == 1
    rows = label_rows(project)
    assert [(r[0], r[1], r[2]) for r in rows] == [(a, "spam", "human:alice"), (a, "spam", "human:bob")]
    assert json.loads(rows[0][4])["votes"] == {"spam": 2}

    respond(argilla_env, "carol", ids[b], "ham")  # breaks the tie
    result = review.pull(project)
    assert result.examples == 1 and result.ties == []
    resolved = [(r[1], r[2], r[3]) for r in label_rows(project) if r[0] == b]
    assert resolved == [("ham", "human:bob", pytest.approx(2 / 3)), ("ham", "human:carol", pytest.approx(2 / 3))]
    meta = json.loads([r for r in label_rows(project) if r[0] == b][0][4])
    assert meta["annotators"] == {"alice": "spam", "bob": "ham", "carol": "ham"}
    assert [r[0] for r in project.store.training_set() if r[0] in (a, b, c)] == sorted([a, b])
    project.close()


def test_review_status_reports_progress_per_annotator(proj, argilla_env):
    proj.round()
    ids = server_ids(argilla_env, proj)
    first, second, third = sorted(ids)[:3]
    respond(argilla_env, "bob", ids[first], "ham")
    respond(argilla_env, "bob", ids[second], "spam", status="draft")
    respond(argilla_env, "alice", ids[third], None, status="discarded")
    data = review.status(proj)
    assert data["total"] == 10 and data["completed"] == 1 and data["pending"] == 9
    # pending: the dataset's records that annotator has not submitted or discarded; carol has not started.
    # pending: as the UI counts it, the records nobody completed that this annotator has not answered at all
    # (test_review_queue.py asks the UI's own endpoint); carol has not started.
    assert data["annotators"] == {
        "alice": {"submitted": 0, "draft": 0, "discarded": 1, "pending": 8},
        "bob": {"submitted": 1, "draft": 1, "discarded": 0, "pending": 8},
        "carol": {"submitted": 0, "draft": 0, "discarded": 0, "pending": 9},
    }
    assert data["pending_in_store"] == 10


def test_recheck_sends_doubtful_labels_and_a_correction_replaces_them(proj, argilla_env):
    from synthloop.loop.review import push_suspicious
    from synthloop.store import NewLabel

    proj.round(labeler="oracle", n=60)
    labeled = sorted(proj.store.training_set())
    planted = {}
    for eid, _, label, _ in [r for r in labeled if r[2] == "spam"][:2] + [r for r in labeled if r[2] == "ham"][:2]:
        planted[eid] = label
        wrong = "ham" if label == "spam" else "spam"
        proj.store.record_labels([NewLabel(eid, wrong, "human:mallory")], None)
    proj.train()

    result = review.push(proj)  # nothing pending: nothing to push
    assert result.pushed == 0
    result = push_suspicious(proj, n=10)
    assert result.pushed == 10 and result.dataset.endswith("-recheck")
    client = rg.Argilla(api_url=argilla_env.url, api_key=argilla_env.api_key)
    records = {str(r.id): r for r in client.datasets(result.dataset, workspace="synthloop").records(with_suggestions=True)}
    from synthloop.report.project_report import label_quality

    quality = label_quality(proj.store, proj.config, proj.new_model, proj.load_model()[1])
    assert set(records) == {row["id"] for row in quality["suspicious"][:10]}
    caught = sorted(set(planted) & set(records))
    assert caught, (planted, sorted(records))
    eid = caught[0]
    assert records[eid].suggestions["label"].value != planted[eid]  # the stored (wrong) label is suggested
    assert "**Stored label:**" in records[eid].fields["hints"] and "human:mallory" in records[eid].fields["hints"]

    respond(argilla_env, "alice", str(records[eid]._server_id), planted[eid])
    pulled = review.pull(proj)
    assert pulled.rechecked == 1 and pulled.added == 0
    assert [r for r in proj.store.training_set() if r[0] == eid][0][2:] == (planted[eid], "human:alice")
    assert review.pull(proj).rechecked == 0  # pulling again adds nothing


# ---------------------------------------------------------------------------------------------- hybrid
@contextlib.contextmanager
def scripted_llm(project, monkeypatch, answer):
    """A local OpenAI-compatible server whose answers the test scripts (tests/llm_servers.py)."""
    from llm_servers import FaultServer

    with FaultServer() as llm:
        llm.reset(answer)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        project.config.llm.base_url = llm.base_url
        project.config.llm.model = "gpt-4o-mini"
        project.config.llm.response_format = "json_object_schema"
        project.config.llm.logprobs = False
        project.config.llm.few_shot = 0
        yield llm


@pytest.mark.parametrize("outcome, prediction, to_human, reason", [
    (Outcome("spam", 0.95, "logprobs", False, None, 0.0), ("spam", 0.99), False, "llm-confident"),
    (Outcome("spam", 0.95, "logprobs", False, None, 0.0), ("ham", 0.6), False, "llm-confident"),
    (Outcome("spam", 0.95, "logprobs", False, None, 0.0), ("ham", 0.95), True, "disagrees-with-model"),
    (Outcome("spam", 0.5, "self-reported", False, None, 0.0), ("spam", 0.99), True, "llm-unsure"),
    (Outcome(None, None, None, True, None, 0.0), None, True, "abstained"),
    (Outcome(None, None, None, False, "timeout", 0.0), None, True, "llm-failed"),
])
def test_router_decisions(outcome, prediction, to_human, reason):
    decision = decide(outcome, prediction, llm_min_confidence=0.8, model_confident=0.9)
    assert (decision.to_human, decision.reason) == (to_human, reason)


def test_hybrid_round_keeps_confident_llm_labels_and_sends_the_rest_to_argilla(proj, argilla_env, monkeypatch):
    def sure(text: str) -> bool:
        return len(text) % 2 == 0

    def answer(body):
        # A scripted LLM, sure about texts of even length and unsure about the rest.
        text = unquote(body["messages"][-1]["content"])
        if sure(text):
            return ("content", '{"label": "spam", "confidence": 0.97}')
        return ("content", '{"label": "ham", "confidence": 0.4}')

    # Any model prediction counts as confident here, so every sure "spam" the model calls ham is contested;
    # and every guess is pre-selected, so the contested records show the model's.
    proj.config.router.model_confident = 0.5
    proj.config.argilla.suggest_min_confidence = 0.0
    with scripted_llm(proj, monkeypatch, answer):
        result = proj.round(labeler="hybrid", n=20)
    queries = {q.example_id: q for q in proj.store.queries()}
    _, model = proj.load_model()  # the model this round trained, which the router asked
    model_says = dict(zip(queries, model.predict([q.text for q in queries.values()])))
    expected = {eid: "llm-unsure" if not sure(q.text) else
                "disagrees-with-model" if model_says[eid] == "ham" else "llm-confident"
                for eid, q in queries.items()}
    assert set(expected.values()) == {"llm-unsure", "disagrees-with-model", "llm-confident"}, expected
    confident = {eid for eid, reason in expected.items() if reason == "llm-confident"}
    assert result.labels_collected == len(confident)
    llm_labels = {r[0]: r[2] for r in proj.store.training_set() if r[3] == "llm:gpt-4o-mini"}
    assert llm_labels == {eid: "spam" for eid in confident}
    humans = {eid for eid, q in queries.items() if q.routed_to == "argilla"}
    assert humans == set(queries) - confident
    assert {eid: queries[eid].meta["llm"]["reason"] for eid in humans} == {eid: expected[eid] for eid in humans}
    assert all(queries[eid].status == "pending" for eid in humans)
    records = {str(r.id): r for r in dataset_of(argilla_env, proj).records(with_suggestions=True)}
    assert set(records) == humans
    unsure = records[min(eid for eid in humans if expected[eid] == "llm-unsure")]
    assert unsure.metadata["llm_label"] == "ham" and unsure.metadata["llm_confidence"] == pytest.approx(0.4)
    assert "**LLM gpt-4o-mini:** ham (0.40" in unsure.fields["hints"]
    # Contested: the reviewer sees the model's ham as the suggestion and the LLM's spam beside it.
    contested = records[min(eid for eid in humans if expected[eid] == "disagrees-with-model")]
    suggestion = contested.suggestions["label"]
    assert (suggestion.value, suggestion.agent) == ("ham", "synthloop-model") and suggestion.score >= 0.5
    assert contested.metadata["llm_label"] == "spam" and "**LLM gpt-4o-mini:** spam (0.97" in contested.fields["hints"]

    ids = server_ids(argilla_env, proj)
    eid = sorted(humans)[0]
    respond(argilla_env, "carol", ids[eid], "spam")
    assert proj.collect() == 1  # the next round's collect step takes the human label
    assert [r for r in proj.store.training_set() if r[0] == eid][0][2:] == ("spam", "human:carol")


def test_without_a_model_the_llm_answer_is_the_suggestion(proj, argilla_env, monkeypatch):
    # `synthloop label --labeler hybrid` on queries made before any model: the LLM is all the reviewer has.
    ids, _ = proj.store.unlabeled_pool(limit=5)
    proj.store.add_queries(0, [(eid, None) for eid in ids], "random", routed_to="hybrid")
    assert proj.store.latest_model() is None
    proj.config.argilla.suggest_min_confidence = 0.5  # an LLM 0.55 sure is pre-selected (the default 0.7: a hint)
    with scripted_llm(proj, monkeypatch, lambda body: ("content", '{"label": "spam", "confidence": 0.55}')):
        assert proj.label() == 0  # unsure of all five: they go to reviewers
    records = list(dataset_of(argilla_env, proj).records(with_suggestions=True))
    assert sorted(str(r.id) for r in records) == sorted(ids)
    for record in records:
        suggestion = record.suggestions["label"]
        assert (suggestion.value, suggestion.agent) == ("spam", "llm:gpt-4o-mini")
        assert suggestion.score == pytest.approx(0.55)
        assert "**LLM gpt-4o-mini:** spam (0.55" in record.fields["hints"] and "**Model:**" not in record.fields["hints"]


def test_hybrid_stops_on_a_refusal_and_the_queries_wait_for_reviewers(proj, argilla_env, monkeypatch):
    # A missing key cannot be fixed by retrying: the error names the fix instead of a warning every night.
    ids, _ = proj.store.unlabeled_pool(limit=5)
    proj.store.add_queries(0, [(eid, None) for eid in ids], "random", routed_to="hybrid")
    monkeypatch.delenv("ARGILLA_API_KEY")
    with scripted_llm(proj, monkeypatch, lambda body: ("content", '{"label": "spam", "confidence": 0.55}')):
        with pytest.raises(SynthloopError, match=r"set \$ARGILLA_API_KEY"):
            proj.label()
    assert {q.routed_to for q in proj.store.queries(status="pending")} == {"argilla"}  # waiting for a push
    assert all(q.submitted_at is None for q in proj.store.queries())


# ----------------------------------------------------------------------------------------------- nightly
def test_two_nights_route_to_argilla_and_collect_what_reviewers_submitted(proj, argilla_env):
    from synthloop.loop.nightly import run_nightly

    first = run_nightly(proj, labeler="argilla", max_labels=10)
    assert first["queried"] == 10 and first["labels_collected"] == 0
    ids = server_ids(argilla_env, proj)
    assert len(ids) == 10
    gold = proj.store.gold_for(list(ids))
    answered = sorted(ids)[:6]
    for eid in answered:  # the reviewers label six of the ten during the day
        respond(argilla_env, "alice", ids[eid], gold[eid])

    second = run_nightly(proj, labeler="argilla", max_labels=10)
    assert second["labels_collected"] == 6 and second["retrained"] and second["queried"] == 10
    assert second["pending"] == 14  # four left from the first night, ten new
    assert len(server_ids(argilla_env, proj)) == 20
    assert {r[0]: r[3] for r in proj.store.training_set() if r[0] in answered} == {eid: "human:alice"
                                                                                     for eid in answered}


def test_a_night_whose_cap_the_leftovers_fill_still_pushes_them(proj, argilla_env, monkeypatch):
    from synthloop.loop.nightly import run_nightly

    proj.config.argilla.retries = 0
    monkeypatch.setenv("ARGILLA_API_URL", CLOSED)
    first = run_nightly(proj, labeler="argilla", max_labels=10)
    assert first["queried"] == 10 and all(q.submitted_at is None for q in proj.store.queries())

    monkeypatch.setenv("ARGILLA_API_URL", argilla_env.url)
    second = run_nightly(proj, labeler="argilla", max_labels=10)
    assert second["carried_over"] == 10 and second["queried"] == 0  # the leftovers are tonight's ten
    assert set(server_ids(argilla_env, proj)) == {q.example_id for q in proj.store.queries()}
    assert all(q.submitted_at for q in proj.store.queries()) and len(proj.store.queries()) == 10


# ---------------------------------------------------------------------------------- server killed mid-push
def test_server_killed_mid_push_then_rerun_finishes_without_duplicates(tmp_path, small_pool, monkeypatch):
    with start_argilla_server(tmp_path / "own", annotators=["alice"]) as server:
        monkeypatch.setenv("ARGILLA_API_URL", server.url)
        monkeypatch.setenv("ARGILLA_API_KEY", server.api_key)
        project = make_project(tmp_path / "proj", small_pool, chunk_size=20, retries=1, retry_wait=0.2,
                               annotators=["alice"], dataset="killed")
        project.round(n=60, labeler="oracle")  # some labels already stored before the push
        labels_before = label_rows(project)
        assert len(labels_before) == 60
        project.round(n=100, route=False)
        assert len(project.store.queries(status="pending")) == 100

        def kill_after_first_chunk(done, total):
            if done == 20:
                server.kill()

        # retries=1: the second chunk is tried twice before the push gives up, and says how far it got.
        with pytest.raises(ArgillaUnreachable,
                           match=r"did not answer \(push\) after 2 tries: .*Pushed 20 of 100 records"):
            review.push(project, on_chunk=kill_after_first_chunk)
        submitted = [q for q in project.store.queries(status="pending") if q.submitted_at]
        assert len(submitted) == 20
        assert label_rows(project) == labels_before

        server.start()  # same data folder and port: what Argilla stored survives
        assert len(list(dataset_of(server, project).records())) == 20
        result = review.push(project)
        assert result.pushed == 100
        records = [str(r.id) for r in dataset_of(server, project).records()]
        assert len(records) == len(set(records)) == 100
        assert set(records) == {q.example_id for q in project.store.queries(status="pending")}
        assert all(q.submitted_at for q in project.store.queries(status="pending"))
        assert label_rows(project) == labels_before

        # A server that restarts mid-push (down ~10 s) is waited for: the push finishes by itself.
        project.config.argilla.retries, project.config.argilla.retry_wait = 6, 1.0
        restarting: list[threading.Thread] = []

        def restart_after_first_chunk(done, total):
            if done == 20:
                server.kill()
                restarting.append(threading.Thread(target=server.start))
                restarting[0].start()

        assert review.push(project, on_chunk=restart_after_first_chunk).pushed == 100
        restarting[0].join()
        records = [str(r.id) for r in dataset_of(server, project).records()]
        assert len(records) == len(set(records)) == 100
        project.close()


# ------------------------------------------------------------------------------------------------------- CLI
def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return run_synthloop(*args, env=env, timeout=300)


def table_rows(text: str) -> dict[str, list[str]]:
    """A rich table's body rows, first cell -> the other cells."""
    rows = [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.strip().startswith("│")]
    return {row[0]: row[1:] for row in rows}


def test_cli_round_review_push_pull_status_as_the_readme_says(tmp_path, small_pool, argilla_env):
    # No [argilla] annotators: the launcher made alice, bob and carol in the workspace synthloop uses too.
    proj = make_project(tmp_path / "proj", small_pool, annotators=[])
    env = {**os.environ, "ARGILLA_API_URL": CLOSED, "ARGILLA_API_KEY": argilla_env.api_key, "COLUMNS": "200"}
    down = run_cli("round", "--labeler", "argilla", "-p", str(proj.root), env=env)
    assert down.returncode == 0, down.stderr  # the loop never blocks on reviewers
    assert f"Argilla at {CLOSED} did not answer (connect) after 4 tries" in down.stderr
    assert down.stderr.count("10 queries stay pending") == 1 and "Traceback" not in down.stderr
    assert all(q.submitted_at is None and q.routed_to == "argilla" for q in proj.store.queries())

    env["ARGILLA_API_URL"] = argilla_env.url
    pushed = run_cli("review", "push", "-p", str(proj.root), "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["pushed"] == 10
    assert argilla_env.api_key not in pushed.stdout + pushed.stderr
    alice = {"X-Argilla-Api-Key": argilla_env.annotators["alice"]}  # what she sees once signed in
    mine = httpx.get(f"{argilla_env.url}/api/v1/me/datasets", headers=alice).raise_for_status().json()["items"]
    assert proj.config.argilla.dataset in [d["name"] for d in mine]

    ids = server_ids(argilla_env, proj)
    eid = sorted(ids)[0]
    respond(argilla_env, "alice", ids[eid], "spam")
    pulled = run_cli("review", "pull", "-p", str(proj.root), "--json", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout) == {"added": 1, "examples": 1, "ties": [], "waiting": 0,
                                          "rechecked": 0}

    shown = run_cli("review", "status", "-p", str(proj.root), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "1 of 10 records done" in shown.stdout
    assert table_rows(shown.stdout) == {"alice": ["1", "0", "0", "9"], "bob": ["0", "0", "0", "9"],
                                        "carol": ["0", "0", "0", "9"]}

    no_key = {k: v for k, v in env.items() if k != "ARGILLA_API_KEY"}
    failed = run_cli("review", "pull", "-p", str(proj.root), env=no_key)
    assert failed.returncode == 2 and "ARGILLA_API_KEY" in failed.stderr and "Traceback" not in failed.stderr
    proj.close()


# --------------------------------------------------------------------------------------------------- browser
def test_review_ui_in_a_browser_shows_suggestions_and_submits_a_label(proj, argilla_env, monkeypatch):
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing: apt-get install -y chromium (`make system-deps` as root)")
    try:
        from playwright import sync_api as playwright
    except ImportError:
        skip_or_fail("playwright is not installed: pip install -e '.[test]'")
    proj.round(labeler="oracle", n=40)  # a model with something to say
    with scripted_llm(proj, monkeypatch, lambda body: ("content", '{"label": "spam", "confidence": 0.55}')):
        proj.round(labeler="hybrid")  # the LLM is unsure of all ten: they go to reviewers with both opinions
    texts = {q.text: q.example_id for q in proj.store.queries()}
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{argilla_env.url}/sign-in")
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill(argilla_env.password)
            page.get_by_role("button", name="Sign in").click()
            dataset = proj.config.argilla.dataset
            page.get_by_text(dataset, exact=True).first.click(timeout=60_000)
            page.get_by_text("LLM gpt-4o-mini:").first.wait_for(timeout=60_000)
            body = page.inner_text("body")
            shown = [text for text in texts if text.strip() and text.strip()[:60] in body]
            assert len(shown) == 1, body[:1000]
            assert "Model:" in body and "Suggestions" in body
            page.screenshot(path=str(artifacts / "argilla-review.png"), full_page=True)
            for label in proj.task.labels:  # the short descriptions, beside the text where the reviewer looks
                assert label.description[:40] in body
            # The UI pre-selects a suggestion: only a guess at least [argilla] suggest_min_confidence sure is one.
            _, model = proj.load_model()
            sure = model.predict_proba([shown[0]]).max() >= proj.config.argilla.suggest_min_confidence
            assert ("not pre-selected" in body) != sure
            active = [name for name in ("ham", "spam")
                      if "label-active" in page.locator(f"label[for=label_{name}]").get_attribute("class")]
            assert len(active) == int(sure), active
            # The reviewer overrules a pre-selected label with the other one, or picks one.
            choice = "spam" if active == ["ham"] else "ham"
            page.locator(f"label[for=label_{choice}]").click()
            page.get_by_role("button", name="Submit").click()
            page.get_by_text("1 of 10").wait_for(state="detached", timeout=30_000)
        finally:
            browser.close()
    pulled = review.pull(proj)
    assert pulled.examples == 1
    eid = texts[shown[0]]
    assert [r for r in proj.store.training_set() if r[0] == eid][0][2:] == (choice, "human:alice")
