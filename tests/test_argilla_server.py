"""The local argilla-server (argilla_setup/) against the official `argilla` SDK: what synthloop relies on
when it sends uncertain examples to reviewers. One server for the module (about 10 s to start)."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import time

import pytest
from argilla_server import argilla_server_skip_reason, process_alive, start_argilla_server
from helpers import skip_or_fail

_reason = argilla_server_skip_reason() or (None if importlib.util.find_spec("argilla") else
                                           "the argilla SDK is not installed in this venv (pip install argilla)")
if _reason:
    skip_or_fail(_reason)
import argilla as rg  # noqa: E402
import httpx  # noqa: E402

LABELS = ["ham", "spam"]
TEXTS = {
    "sms-1": "WINNER!! claim your free prize now",
    "sms-2": "are we still on for lunch tomorrow",
    "sms-3": "free entry in a weekly competition, text WIN",
    "sms-4": "sorry, I'll call you later",
    "sms-5": "urgent: your account has a free bonus",
    "sms-6": "see you at the station at six",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_argilla_server(tmp_path_factory.mktemp("argilla")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return rg.Argilla(api_url=server.url, api_key=server.api_key)


def _settings():
    return rg.Settings(
        fields=[rg.TextField(name="text")],
        questions=[rg.LabelQuestion(name="label", labels=LABELS)],
        metadata=[rg.TermsMetadataProperty(name="source"), rg.FloatMetadataProperty(name="uncertainty")],
    )


def _records():
    return [
        rg.Record(
            id=rid,
            fields={"text": text},
            metadata={"source": "pool" if i % 2 else "synthetic", "uncertainty": round(0.1 * i, 2)},
            suggestions=[rg.Suggestion(question_name="label", value="spam" if "free" in text else "ham",
                                       score=0.5 + 0.05 * i, agent="synthloop")],
        )
        for i, (rid, text) in enumerate(TEXTS.items(), start=1)
    ]


def _ids(records) -> list[str]:
    return sorted(r.id for r in records)


def _api(server, api_key=None):
    return httpx.Client(base_url=server.url, headers={"X-Argilla-Api-Key": api_key or server.api_key}, timeout=30)


@pytest.fixture(scope="module")
def review(server, client):
    """A workspace, an annotator in it, and a dataset with records logged twice."""
    workspace = rg.Workspace(name="review", client=client).create()
    user = rg.User(username="annie", password="annie-pass-1", role="annotator", client=client).create()
    workspace.add_user(user)
    with _api(server) as api:  # the SDK does not expose api keys; owners read them from the REST API
        annie_key = api.get(f"/api/v1/users/{user.id}").raise_for_status().json()["api_key"]
    dataset = rg.Dataset(name="sms_review", workspace=workspace, settings=_settings(), client=client).create()
    dataset.records.log(_records())
    dataset.records.log(_records())  # same ids again: upserted, not duplicated

    # Annie answers as a reviewer would, through the REST API with her own key: sms-3 submitted, sms-4 draft.
    server_ids = {r.id: r._server_id for r in dataset.records}
    with _api(server, annie_key) as api:
        me = api.get("/api/v1/me").raise_for_status().json()
        assert (me["username"], me["role"]) == ("annie", "annotator")
        api.post(f"/api/v1/records/{server_ids['sms-3']}/responses",
                 json={"values": {"label": {"value": "spam"}}, "status": "submitted"}).raise_for_status()
        api.post(f"/api/v1/records/{server_ids['sms-4']}/responses",
                 json={"values": {"label": {"value": "ham"}}, "status": "draft"}).raise_for_status()
    return {"workspace": workspace, "user": user, "annie_key": annie_key, "dataset": dataset}


def test_connects_as_owner(server, client):
    assert client.me.username == server.username == "argilla"
    assert client.me.role == "owner"
    with _api(server) as api:
        status = api.get("/api/v1/status").raise_for_status().json()
    assert status["search_engine"]["name"] == "inmemory"


def test_records_are_upserted_by_our_id(review):
    records = list(review["dataset"].records(with_suggestions=True))
    assert _ids(records) == sorted(TEXTS)
    by_id = {r.id: r for r in records}
    suggestion = by_id["sms-1"].suggestions["label"]
    assert (suggestion.value, suggestion.agent) == ("spam", "synthloop")
    assert by_id["sms-2"].suggestions["label"].value == "ham"


def test_annotator_response_over_rest_reads_back_in_sdk(review):
    by_id = {r.id: r for r in review["dataset"].records(with_responses=True)}
    [response] = by_id["sms-3"].responses["label"]
    assert (response.value, response.status) == ("spam", "submitted")
    assert response.user_id == review["user"].id
    assert by_id["sms-3"].status == "completed"  # min_submitted defaults to 1
    assert by_id["sms-4"].status == "pending"


def test_search_by_metadata_suggestion_and_text(review):
    dataset = review["dataset"]
    pool = dataset.records(query=rg.Query(filter=rg.Filter(("metadata.source", "==", "pool"))))
    assert _ids(pool) == ["sms-1", "sms-3", "sms-5"]
    uncertain = dataset.records(query=rg.Query(filter=rg.Filter([("metadata.uncertainty", ">=", 0.35),
                                                                 ("metadata.source", "==", "synthetic")])))
    assert _ids(uncertain) == ["sms-4", "sms-6"]
    assert _ids(dataset.records(query=rg.Query(filter=rg.Filter(("label", "==", "spam"))))) == ["sms-1", "sms-3", "sms-5"]
    assert _ids(dataset.records(query=rg.Query(query="free"))) == ["sms-1", "sms-3", "sms-5"]


def test_pending_filters(server, review):
    dataset = review["dataset"]
    # Through the SDK (no user scope): "pending" means no response from anyone.
    no_response = dataset.records(query=rg.Query(filter=rg.Filter(("response.status", "==", "pending"))))
    assert _ids(no_response) == ["sms-1", "sms-2", "sms-5", "sms-6"]
    open_records = dataset.records(query=rg.Query(filter=rg.Filter(("status", "==", "pending"))))
    assert _ids(open_records) == ["sms-1", "sms-2", "sms-4", "sms-5", "sms-6"]
    assert _ids(dataset.records(query=rg.Query(filter=rg.Filter(("response.status", "==", "draft"))))) == ["sms-4"]

    # The web UI's "Pending" queue: the annotator's own unanswered records that are not completed.
    ui_pending = {"filters": {"and": [
        {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
        {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]},
    ]}}
    with _api(server, review["annie_key"]) as api:
        found = api.post(f"/api/v1/me/datasets/{dataset.id}/records/search", json=ui_pending).raise_for_status().json()
    assert found["total"] == 4
    assert sorted(item["record"]["external_id"] for item in found["items"]) == ["sms-1", "sms-2", "sms-5", "sms-6"]


def test_progress(server, review):
    dataset = review["dataset"]
    with _api(server) as api:
        progress = api.get(f"/api/v1/datasets/{dataset.id}/progress").raise_for_status().json()
    assert (progress["total"], progress["completed"], progress["pending"]) == (6, 1, 5)
    assert [u["username"] for u in progress["users"]] == ["annie"]
    with _api(server, review["annie_key"]) as api:
        mine = api.get(f"/api/v1/me/datasets/{dataset.id}/metrics").raise_for_status().json()["responses"]
    assert mine == {"total": 6, "submitted": 1, "discarded": 0, "draft": 1, "pending": 4}
    assert dataset.progress(with_users_distribution=True)["users"]["annie"]["completed"]["submitted"] == 1


def test_metadata_metrics(server, review):
    with _api(server) as api:
        metrics = {
            mp.name: api.get(f"/api/v1/metadata-properties/{mp.id}/metrics").raise_for_status().json()
            for mp in review["dataset"].settings.metadata
        }
    assert metrics["source"]["total"] == 6
    assert {v["term"]: v["count"] for v in metrics["source"]["values"]} == {"pool": 3, "synthetic": 3}
    assert (metrics["uncertainty"]["min"], metrics["uncertainty"]["max"]) == pytest.approx((0.1, 0.6))


def test_background_job_updates_record_status(review):
    # Changing min_submitted enqueues an rq job that recomputes statuses in the search index.
    # Ends where it started (min_submitted=1), so the other tests see the same state in any order.
    dataset = review["dataset"]
    for needed, completed in ((2, 0), (1, 1)):
        dataset.settings.distribution = rg.TaskDistribution(min_submitted=needed)
        dataset.update()
        deadline = time.monotonic() + 20
        while dataset.progress()["completed"] != completed and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dataset.progress()["completed"] == completed


def _redis_children(server) -> list[int]:
    redis = server.children("redis-server")
    assert bool(redis) == bool(shutil.which("redis-server"))  # a real Redis wherever one is installed
    return redis


def _ctrl_c(server):
    """SIGINT, as Ctrl-C in `make argilla`: a clean exit (status 0) that takes its Redis child along."""
    redis = _redis_children(server)
    assert server.stop(sig=signal.SIGINT) == 0, server._stderr_tail()
    assert not any(process_alive(pid) for pid in redis)
    server.start()


def _crash(server):
    """SIGKILL: nothing is cleaned up by the launcher, yet its Redis dies with it (PR_SET_PDEATHSIG)."""
    redis = _redis_children(server)
    server.kill()
    deadline = time.monotonic() + 10
    while any(process_alive(pid) for pid in redis) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(process_alive(pid) for pid in redis)
    server.start()


def test_index_rebuilt_after_restart_and_crash(server, client, review):
    dataset_id = review["dataset"].id
    for stop in (_ctrl_c, _crash):
        stop(server)
        fresh = rg.Argilla(api_url=server.url, api_key=server.api_key)
        dataset = fresh.datasets(name="sms_review", workspace="review")
        assert dataset.id == dataset_id
        assert _ids(dataset.records(query=rg.Query(filter=rg.Filter(("metadata.source", "==", "pool"))))) == [
            "sms-1", "sms-3", "sms-5"]
        assert _ids(dataset.records(query=rg.Query(filter=rg.Filter(("response.status", "==", "submitted"))))) == [
            "sms-3"]
        assert dataset.progress()["completed"] == 1


def test_search_engine_covers_vectors_ratings_edits_and_deletes(server, client):
    """The rest of the in-memory engine: similarity search, rating/multi-label filters, sorting, metadata
    added after publishing, suggestion and response edits, record and dataset deletion."""
    settings = rg.Settings(
        fields=[rg.TextField(name="text")],
        questions=[rg.MultiLabelQuestion(name="tags", labels=["x", "y", "z"]),
                   rg.RatingQuestion(name="rating", values=[1, 2, 3, 4, 5], required=False)],
        metadata=[rg.IntegerMetadataProperty(name="n")],
        vectors=[rg.VectorField(name="emb", dimensions=3)],
    )
    workspace = client.workspaces("synthloop")  # the launcher's default, synthloop's too
    dataset = rg.Dataset(name="engine_coverage", workspace=workspace, settings=settings, client=client).create()
    dataset.records.log([
        rg.Record(id=f"c{i}", fields={"text": f"alpha beta {'gamma' if i % 2 else 'delta'} word{i}"},
                  metadata={"n": i}, vectors={"emb": [1.0, float(i), 0.5]},
                  suggestions=[rg.Suggestion("tags", ["x", "y"] if i % 2 else ["z"]),
                               rg.Suggestion("rating", i % 5 + 1)])
        for i in range(8)
    ])

    def ids(**query):
        return _ids(dataset.records(query=rg.Query(**query)))

    similar = dataset.records(query=rg.Query(similar=rg.Similar(name="emb", value=[1.0, 1.0, 0.5])), limit=2)
    assert [r.id for r, _score in similar] == ["c1", "c2"]
    assert ids(filter=rg.Filter(("tags", "in", ["x"]))) == ["c1", "c3", "c5", "c7"]
    assert ids(filter=rg.Filter(("rating", ">=", 4))) == ["c3", "c4"]
    assert ids(filter=rg.Filter([("metadata.n", ">=", 2), ("metadata.n", "<=", 4)])) == ["c2", "c3", "c4"]
    assert ids(query='"beta gamma"') == ["c1", "c3", "c5", "c7"]
    assert ids(query="alpha -gamma") == ["c0", "c2", "c4", "c6"]
    assert ids(query="word1*") == ["c1"]

    sort = {"sort": [{"scope": {"entity": "suggestion", "question": "rating", "property": "value"}, "order": "desc"},
                     {"scope": {"entity": "record", "property": "inserted_at"}, "order": "asc"}]}
    with _api(server) as api:
        found = api.post(f"/api/v1/datasets/{dataset.id}/records/search", json=sort).raise_for_status().json()
        assert [i["record"]["external_id"] for i in found["items"]][:4] == ["c4", "c3", "c2", "c7"]

        dataset.settings.metadata.add(rg.TermsMetadataProperty(name="late"))
        dataset.update()
        records = {r.id: r for r in dataset.records}
        records["c1"].metadata["late"] = "yes"
        dataset.records.log([records["c1"]])
        assert ids(filter=rg.Filter(("metadata.late", "==", "yes"))) == ["c1"]

        c2 = records["c2"]._server_id
        rating_id = str(dataset.settings.questions["rating"].id)
        api.put(f"/api/v1/records/{c2}/suggestions", json={"question_id": rating_id, "value": 5}).raise_for_status()
        assert ids(filter=rg.Filter(("rating", "==", 5))) == ["c2", "c4"]
        suggestion_ids = [s["id"] for s in api.get(f"/api/v1/records/{c2}/suggestions").json()["items"]]
        api.delete(f"/api/v1/records/{c2}/suggestions", params={"ids": ",".join(suggestion_ids)}).raise_for_status()
        assert ids(filter=rg.Filter(("rating", "==", 5))) == ["c4"]

        c3 = records["c3"]._server_id
        response = api.post(f"/api/v1/records/{c3}/responses", json={
            "values": {"tags": {"value": ["y"]}, "rating": {"value": 2}}, "status": "submitted"}).raise_for_status().json()
        assert ids(filter=rg.Filter(("rating.response", "==", 2))) == ["c3"]
        assert dataset.progress()["completed"] == 1
        api.put(f"/api/v1/responses/{response['id']}",
                json={"values": {"tags": {"value": ["z"]}}, "status": "discarded"}).raise_for_status()
        assert ids(filter=rg.Filter(("response.status", "==", "discarded"))) == ["c3"]
        api.delete(f"/api/v1/responses/{response['id']}").raise_for_status()
        assert ids(filter=rg.Filter(("response.status", "==", "pending"))) == [f"c{i}" for i in range(8)]

        dataset.records.delete([records["c7"]])
        assert dataset.progress()["total"] == 7
        n_id = dataset.settings.metadata["n"].id
        assert api.get(f"/api/v1/metadata-properties/{n_id}/metrics").json() == {"min": 0, "max": 6, "type": "integer"}
        documents = api.get("/api/v1/status").json()["search_engine"]["documents"]
        dataset.delete()
        assert api.get("/api/v1/status").json()["search_engine"]["documents"] == documents - 7


def test_without_redis_server_falls_back_to_fakeredis(tmp_path):
    # A PATH with no redis-server on it (nor anything else: the launcher must need no other binary).
    empty = tmp_path / "bin"
    empty.mkdir()
    # Secrets set in the environment are not printed (the built-in defaults are public and are).
    secrets = {"ARGILLA_API_KEY": "owner-key-from-env-1234", "ARGILLA_PASSWORD": "password-from-env-5678"}
    with start_argilla_server(tmp_path, annotators=["annie"], env={"PATH": str(empty), **secrets}) as srv:
        assert "redis-server not found: using fakeredis" in srv.stderr_path.read_text()
        printed = srv.stdout_path.read_text() + srv.stderr_path.read_text()
        assert "api_key=$ARGILLA_API_KEY" in printed and "password=$ARGILLA_PASSWORD" in printed
        assert not any(value in printed for value in secrets.values())
        assert srv.api_key == secrets["ARGILLA_API_KEY"]
        assert srv.children() == []  # no Redis child: fakeredis lives inside the launcher
        client = rg.Argilla(api_url=srv.url, api_key=srv.api_key)
        dataset = rg.Dataset(name="fake", workspace=client.workspaces("synthloop"), settings=_settings(),
                             client=client).create()
        dataset.records.log(_records())
        with _api(srv, srv.annotators["annie"]) as api:
            record = next(r for r in dataset.records if r.id == "sms-1")
            api.post(f"/api/v1/records/{record._server_id}/responses",
                     json={"values": {"label": {"value": "spam"}}, "status": "submitted"}).raise_for_status()
        # A background job (statuses recomputed after a distribution change) goes through fakeredis' queue.
        dataset.settings.distribution = rg.TaskDistribution(min_submitted=2)
        dataset.update()
        deadline = time.monotonic() + 20
        while dataset.progress()["completed"] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dataset.progress()["completed"] == 0
        assert srv.stop(sig=signal.SIGINT) == 0, srv._stderr_tail()
