"""What reviewers are shown and how much waits for them, against the real local argilla-server: unsure guesses
are hints, not pre-selected; records still waiting get the new model's guesses after a retrain; a capped
queue is topped up and withdraws what is no longer worth a review; `review status` counts as the UI does."""

# The fixtures come from test_review (one server per module); pytest passes them by name, which ruff reads as
# a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import httpx
import numpy as np
import pytest
from test_review import (  # noqa: F401 - fixtures
    ANNOTATORS,
    argilla_env,
    dataset_of,
    make_project,
    proj,
    respond,
    server,
    server_ids,
)

from synthloop.labelers import argilla_queue
from synthloop.learn import active
from synthloop.loop import review
from synthloop.store import NewLabel


def records_by_id(server, project) -> dict:
    return {str(r.id): r for r in dataset_of(server, project).records(with_suggestions=True)}


def suggested(record):
    return next((s for s in record.suggestions if s.question_name == "label"), None)


def model_view(project, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The latest model's confidence and margin uncertainty, computed here rather than by the labeler."""
    _, model = project.load_model()
    proba = model.predict_proba(texts)
    return proba.max(axis=1), active.uncertainty("margin", proba)


def test_unsure_guesses_are_hints_and_sure_ones_preselected(proj, argilla_env):
    proj.round()
    queries = proj.store.queries()
    confidence, uncertainty = model_view(proj, [q.text for q in queries])
    bar = proj.config.argilla.suggest_min_confidence
    assert bar == 0.8 and (confidence < bar).any()  # uncertainty sampling picks coin flips
    records = records_by_id(argilla_env, proj)
    for query, conf, unc in zip(queries, confidence, uncertainty):
        record = records[query.example_id]
        assert record.metadata["uncertainty"] == pytest.approx(round(float(unc), 3), abs=1e-9)
        assert "**Model:** " in record.fields["hints"] and f"({conf:.2f}" in record.fields["hints"]
        if conf >= bar:
            assert suggested(record).score == pytest.approx(round(float(conf), 3))
        else:
            assert suggested(record) is None
            assert "— not pre-selected (below 0.80)" in record.fields["hints"]
    question = dataset_of(argilla_env, proj).settings.questions["label"]
    for label in proj.task.labels:  # the short descriptions, where the reviewer looks
        assert f"{label.name}: {label.description}" in question.description

    proj.config.argilla.suggest_min_confidence = 0.0  # always pre-select: every record gets the guess
    assert review.push(proj).pushed == 10
    assert all(suggested(r) is not None for r in records_by_id(argilla_env, proj).values())
    proj.config.argilla.suggest_min_confidence = 1.0  # never: the suggestions pushed before are deleted
    assert review.push(proj).pushed == 10
    assert all(suggested(r) is None for r in records_by_id(argilla_env, proj).values())


def test_a_retrain_refreshes_the_records_still_waiting(proj, argilla_env):
    proj.config.argilla.suggest_min_confidence = 0.6
    first = proj.round()
    ids = server_ids(argilla_env, proj)
    gold = proj.store.gold_for(list(ids))
    answered = sorted(ids)[:5]
    for eid in answered:
        respond(argilla_env, "alice", ids[eid], gold[eid])
    before = records_by_id(argilla_env, proj)

    second = proj.round()  # collects the five, retrains, refreshes the other five, pushes ten more
    assert second.labels_collected == 5 and second.model_version != first.model_version
    assert argilla_queue.pushed_with(proj.store, proj.config.argilla.dataset) == second.model_version
    waiting = [q for q in proj.store.queries(status="pending") if q.round == first.number]
    assert len(waiting) == 5
    confidence, uncertainty = model_view(proj, [q.text for q in waiting])
    after = records_by_id(argilla_env, proj)
    changed = 0
    for query, conf, unc in zip(waiting, confidence, uncertainty):
        record = after[query.example_id]
        assert record.metadata["uncertainty"] == pytest.approx(round(float(unc), 3), abs=1e-9)
        assert record.metadata["round"] == first.number  # when it was asked stays
        assert f"({conf:.2f}" in record.fields["hints"]
        assert (suggested(record) is not None) == (conf >= 0.6)
        changed += record.metadata["uncertainty"] != before[query.example_id].metadata["uncertainty"]
    assert changed, "the retrained model should see the waiting records differently"
    # The answered records keep what the annotator saw when answering.
    for eid in answered:
        assert after[eid].metadata == before[eid].metadata


def ui_pending(server, user: str, dataset_id) -> int:
    """The count in the annotator's Pending queue, asked the way the review UI asks it."""
    body = {"query": {}, "filters": {"and": [
        {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
        {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}]}}
    r = httpx.post(f"{server.url}/api/v1/me/datasets/{dataset_id}/records/search", json=body,
                   params={"limit": 1}, headers={"X-Argilla-Api-Key": server.annotators[user]})
    r.raise_for_status()
    return r.json()["total"]


def test_review_status_counts_as_the_ui_does(proj, argilla_env):
    proj.round()
    ids = server_ids(argilla_env, proj)
    first, second, third = sorted(ids)[:3]
    respond(argilla_env, "bob", ids[first], "ham")  # completes the record for everyone (min_submitted 1)
    respond(argilla_env, "bob", ids[second], "spam", status="draft")
    respond(argilla_env, "alice", ids[third], None, status="discarded")
    data = review.status(proj)
    assert data["total"] == 10 and data["completed"] == 1 and data["pending"] == 9
    dataset_id = dataset_of(argilla_env, proj).id
    assert {user: row["pending"] for user, row in data["annotators"].items()} == \
        {user: ui_pending(argilla_env, user, dataset_id) for user in ANNOTATORS} == {"alice": 8, "bob": 8, "carol": 9}
    assert data["annotators"]["bob"] == {"submitted": 1, "draft": 1, "discarded": 0, "pending": 8}


def test_a_capped_queue_is_topped_up_and_withdraws_what_is_not_worth_a_review(tmp_path, small_pool, argilla_env):
    project = make_project(tmp_path / "proj", small_pool, max_pending=15)
    assert project.round().queried == 10
    assert project.round().queried == 5  # topped up to the cap, not 10 more
    assert project.round().queried == 0 and len(server_ids(argilla_env, project)) == 15
    waiting = project.store.queries(status="pending")
    assert len(waiting) == 15 and all(q.submitted_at for q in waiting)

    ids = server_ids(argilla_env, project)
    gold = project.store.gold_for(list(ids))
    by_other_path, started = sorted(ids)[:2], sorted(ids)[2]
    # Labeled elsewhere (an import): withdrawn from Argilla, its label kept. A draft keeps its record.
    project.store.record_labels([NewLabel(eid, gold[eid], "import") for eid in by_other_path], None)
    respond(argilla_env, "carol", ids[started], gold[started], status="draft")
    project.config.argilla.withdraw_confidence = 0.5  # every two-class guess is this sure: all others go
    result = project.round()
    assert result.model_version is not None
    left = server_ids(argilla_env, project)
    assert not set(by_other_path) & set(left) and started in left
    statuses = {q.example_id: q.status for q in project.store.queries()}
    assert {statuses[eid] for eid in by_other_path} == {"labeled"}
    withdrawn = [eid for eid, status in statuses.items() if status == argilla_queue.WITHDRAWN]
    assert len(withdrawn) == 12 and not set(withdrawn) & set(left)
    assert all(q.meta["withdrawn"]["reason"] == "confident" for q in project.store.queries(status="withdrawn"))
    # The room this opened is filled with the round's picks, a batch (10) at a time, up to the cap.
    assert result.queried == 10 and len(left) == 11
    project.config.argilla.withdraw_confidence = 1.0
    assert project.round().queried == 4
    assert len(server_ids(argilla_env, project)) == len(project.store.queries(status="pending")) == 15
    project.close()


def test_the_cap_keeps_the_most_uncertain_and_the_rest_wait_unpushed(tmp_path, small_pool, argilla_env):
    project = make_project(tmp_path / "proj", small_pool, max_pending=4)
    project.config.loop.labeler = "oracle"
    project.round(route=False)  # ten queries made for another labeler, then sent to reviewers
    project.store.reroute([q.example_id for q in project.store.queries()], "argilla")
    assert review.push(project).pushed == 4
    queries = project.store.queries()
    pushed = [q for q in queries if q.submitted_at]
    assert len(pushed) == 4
    _, uncertainty = model_view(project, [q.text for q in queries])
    ranked = [q for _, q in sorted(zip(-uncertainty, queries), key=lambda pair: pair[0])]
    assert {q.example_id for q in pushed} == {q.example_id for q in ranked[:4]}
    assert set(server_ids(argilla_env, project)) == {q.example_id for q in pushed}
    assert review.push(project).pushed == 4  # pushing again updates the four, adds none
    project.close()


def test_tending_the_queue_stores_nothing_itself(tmp_path, small_pool, argilla_env):
    """argilla_queue.tend acts in Argilla only (deletes and refreshes records); what that means for the store goes
    back to its caller: the withdrawn queries through `withdraw`, the model the records now show as `meta`."""
    from synthloop.labelers.argilla import ArgillaLabeler
    from synthloop.store import Collected

    project = make_project(tmp_path / "proj", small_pool, max_pending=10)
    dataset = project.config.argilla.dataset
    assert project.round().queried == 10 and len(server_ids(argilla_env, project)) == 10
    shown = argilla_queue.pushed_with(project.store, dataset)
    version, model = project.train()
    assert shown is not None and shown != version
    project.config.argilla.withdraw_confidence = 0.5  # every two-class guess is this sure: all ten go
    before = [(q.example_id, q.status, q.meta) for q in project.store.queries()]
    withdrawn: dict[str, dict] = {}
    result = argilla_queue.tend(ArgillaLabeler(project.label_context()), version, model, withdraw=withdrawn.update)

    assert result is not None and result.withdrawn == {"confident": 10} and len(withdrawn) == 10
    assert server_ids(argilla_env, project) == {}  # gone from Argilla
    assert [(q.example_id, q.status, q.meta) for q in project.store.queries()] == before  # the store untouched
    assert argilla_queue.pushed_with(project.store, dataset) == shown
    assert result.meta == argilla_queue.model_meta(dataset, version)

    project.store.withdraw(withdrawn)  # what the round does with it (synthloop.loop.review.tend)
    project.store.apply(Collected(meta=result.meta), None)
    assert len(project.store.queries(status=argilla_queue.WITHDRAWN)) == 10
    assert argilla_queue.pushed_with(project.store, dataset) == version
    project.close()
