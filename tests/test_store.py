"""The store's dialect-sensitive behaviour, on SQLite and on a real PostgreSQL server (the `db` fixture)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import sqlalchemy as sa

from synthloop.store import (
    Collected,
    Job,
    JobStatus,
    LLMUsage,
    ModelRow,
    NewLabel,
    PoolFileRow,
    RoundRow,
    RoundUsage,
    RunRow,
    Store,
    TrainingRow,
    as_dicts,
    models,
    pool_files,
    rounds,
    runs,
)


@pytest.fixture
def store(db, tmp_path):
    s = Store(db or f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def rows(*ids: str) -> list[dict]:
    return [{"id": i, "text": f"text {i}", "origin": "pool", "split": "pool"} for i in ids]


def test_inserts_count_only_new_rows(store):
    assert store.add_examples(rows("a", "b", "c")) == 3
    assert store.add_examples(rows("b", "c", "d")) == 1  # psycopg reports no rowcount for many rows: RETURNING does
    labels = [NewLabel("a", "spam", "oracle"), NewLabel("b", "ham", "oracle")]
    assert store.record_labels(labels, round_=0) == 2
    assert store.record_labels([*labels, NewLabel("a", "ham", "human:x")], round_=0) == 1
    assert store.add_queries(0, [("c", 0.5), ("d", None)], "margin", "oracle") == 2
    assert store.add_queries(1, [("c", 0.1)], "margin", "oracle") == 0  # an example is queried once, ever
    many = [f"id{i:05d}" for i in range(12_000)]  # more than one insert chunk
    assert store.add_examples(rows(*many)) == 12_000 and store.add_examples(rows(*many)) == 0


def test_json_without_nan_and_float_timestamps_round_trip(store):
    number, resumed = store.open_round()
    assert (number, resumed) == (0, False)
    metrics = {"accuracy": 0.75, "kappa": math.nan, "nested": {"inf": math.inf, "list": [1.5, -math.inf, "x"]}}
    store.update_round(0, metrics=metrics)
    # PostgreSQL's json type refuses NaN and Infinity; both stores keep null instead, so both read the same.
    assert store.round(0).metrics == {"accuracy": 0.75, "kappa": None, "nested": {"inf": None, "list": [1.5, None, "x"]}}
    store.add_examples(rows("a"))
    stamp = 1_764_633_600.123456  # sub-millisecond: a REAL/float4 column would lose it
    store.add_examples([{**rows("b")[0], "created_at": stamp, "meta": {"unicode": "naïve \u0000 ok"}}])
    with store.engine.connect() as conn:
        got = conn.execute(sa.text("SELECT created_at, meta FROM examples WHERE id = 'b'")).one()
    assert got[0] == stamp
    assert (got[1] if isinstance(got[1], dict) else json.loads(got[1]))["unicode"] == "naïve \u0000 ok"


def test_ids_sort_the_same_on_both_databases(store):
    """Stop set, pool chunks and ties follow id order; PostgreSQL's locale collation would put "B" after "a"."""
    ids = ["b", "B", "a", "A", "_x", "a-1", "a1", "Z"]
    store.add_examples(rows(*ids))
    assert store.stop_set(100)[0] == sorted(ids)
    assert [i for chunk, _ in store.unlabeled_pool_chunks(3) for i in chunk] == sorted(ids)


def test_text_with_a_nul_character_is_stored(store):
    store.add_examples([{"id": "n", "text": "before\x00after", "origin": "pool", "split": "pool"}])
    ids, texts = store.unlabeled_pool()
    assert ids == ["n"] and texts[0].startswith("before") and texts[0].endswith("after")


def test_pool_file_upsert_keeps_one_row_and_big_sizes(store):
    store.record_pool_file("/data/pool.csv", 5 * 2**30, 1.5, 10, 10)  # 5 GiB: beyond a 32-bit INTEGER
    store.record_pool_file("/data/pool.csv", 6 * 2**30, 2.5, 12, 2)
    got = store.pool_file("/data/pool.csv")
    assert (got.size, got.mtime, got.rows, got.added) == (6 * 2**30, 2.5, 12, 2)


def test_run_ids_autoincrement_and_meta_upsert(store):
    assert [store.start_run("nightly"), store.start_run("nightly")] == [1, 2]
    store.set_meta("k", {"a": 1})
    store.set_meta("k", {"a": 2})
    store.record_llm_calls([{"purpose": "label", "model": "m", "cost": 0.25, "round": 0}], {"job:x": {"state": "done"}})
    assert store.get_meta("k") == {"a": 2} and store.meta_with_prefix("job:") == {"job:x": {"state": "done"}}
    assert store.llm_usage()[0].cost == 0.25 and store.llm_cost_since(0) == 0.25


def test_files_keep_their_first_content(store):
    store.put_files({"m/v0001.joblib": b"\x00\x01binary"})
    store.put_files({"m/v0001.joblib": b"other"})
    assert store.get_file("m/v0001.joblib") == b"\x00\x01binary" and store.get_file("missing") is None


def test_reopening_migrates_a_schema_1_store(db, tmp_path):
    url = db or f"sqlite:///{tmp_path / 'store.db'}"
    first = Store(url)
    engine = sa.create_engine(first.engine.url)  # the same database, without the store's own hooks
    first.close()
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE queries DROP COLUMN meta"))
    engine.dispose()
    store = Store(url)  # schema 1 had no queries.meta: reopening adds it
    store.add_examples(rows("a"))
    store.add_queries(0, [("a", 0.5)], "margin", "oracle")
    store.set_query_meta({"a": {"llm": {"label": "spam"}}})
    assert store.queries()[0].meta == {"llm": {"label": "spam"}}
    store.close()


def test_a_batch_job_is_stored_with_its_queries_and_moves_through_its_states(store):
    store.add_examples(rows("c", "a", "b"))
    store.add_queries(0, [("c", 0.1), ("a", 0.2), ("b", 0.3)], "margin", "llm-batch")
    job = Job("llm-batch", "batch-0", JobStatus.OPEN, ("c", "a", "b"), model="gpt-4o", round=0, estimated_cost=0.5,
              created_at=1_764_633_600.5)
    store.mark_submitted(["c", "a", "b"], jobs=[job])
    (stored,) = store.jobs("llm-batch").values()
    assert stored.example_ids == ("c", "a", "b")  # the order sent, not id order
    assert (stored.status, stored.model, stored.round, stored.estimated_cost, stored.created_at) == (
        JobStatus.OPEN, "gpt-4o", 0, 0.5, 1_764_633_600.5)
    assert {q.example_id for q in store.queries(submitted=True)} == {"a", "b", "c"}
    answered = dataclasses.replace(stored, status=JobStatus.ANSWERED, cost=0.25, detail={"status": "completed"})
    store.apply(Collected(labels=[NewLabel("a", "spam", "llm:gpt-4o")], jobs=[answered]), 0)
    got = store.jobs("llm-batch")["batch-0"]
    assert (got.status, got.cost, got.detail, got.example_ids) == (JobStatus.ANSWERED, 0.25, {"status": "completed"},
                                                                   ("c", "a", "b"))
    assert store.jobs("llm-batch", [JobStatus.OPEN]) == {} and store.jobs("other") == {}
    assert store.queries(status="labeled")[0].example_id == "a"  # the label and the job's new state, at once


def test_batch_jobs_kept_in_meta_by_an_older_store_move_to_the_jobs_table(db, tmp_path):
    from synthloop.labelers.batch import jobs

    url = db or f"sqlite:///{tmp_path / 'store.db'}"
    old = Store(url)
    old.add_examples(rows("x", "y", "z"))
    with old.engine.begin() as conn:  # the store as schema 5 left it, with what its Batch labeler wrote
        conn.execute(sa.text("DROP TABLE job_queries"))
        conn.execute(sa.text("DROP TABLE jobs"))
    old.set_meta("schema_version", 5)
    old.set_meta("llm-batch:job:batch-0", {"state": "answered", "ids": ["z", "x"], "model": "gpt-4o", "round": 0,
                                           "estimated_cost": 0.02, "submitted_at": 100.0, "status": "completed",
                                           "answered_at": 200.0, "cost": 0.015})
    old.set_meta("llm-batch:job:batch-1", {"state": "open", "ids": ["y"], "model": "gpt-4o-mini", "round": 1,
                                           "estimated_cost": 0.01, "submitted_at": 300.0})
    old.set_meta("llm-batch:job:batch-2", {"state": "lost", "ids": ["y"], "model": "gpt-4o", "round": 1,
                                           "estimated_cost": 0.03, "submitted_at": 250.0, "lost_at": 290.0})
    old.set_meta("latency:v1", {"p50": 1.0})
    old.close()
    store = Store(url)  # opening migrates
    got = store.jobs("llm-batch")
    assert list(got) == ["batch-0", "batch-2", "batch-1"]  # by when each was submitted
    answered, lost, open_ = got["batch-0"], got["batch-2"], got["batch-1"]
    assert (answered.status, answered.example_ids, answered.cost, answered.estimated_cost, answered.created_at,
            answered.updated_at, answered.detail) == (JobStatus.ANSWERED, ("z", "x"), 0.015, 0.02, 100.0, 200.0,
                                                      {"status": "completed", "answered_at": 200.0})
    assert (open_.status, open_.example_ids, open_.model, open_.round) == (JobStatus.OPEN, ("y",), "gpt-4o-mini", 1)
    assert lost.status == JobStatus.LOST and lost.error and lost.updated_at == 290.0
    assert set(jobs(store)) == {"batch-0", "batch-1"}  # the labeler reads them from the jobs table now
    assert store.meta_with_prefix("llm-batch:") == {} and store.get_meta("latency:v1") == {"p50": 1.0}
    assert store.get_meta("schema_version") == 6
    store.close()
    again = Store(url)  # a second open moves nothing twice
    assert list(again.jobs("llm-batch")) == ["batch-0", "batch-2", "batch-1"]
    again.close()


def test_label_history_and_example_labels_are_typed_rows_of_every_stored_label(store):
    store.add_examples(rows("b", "a"))
    store.record_labels([NewLabel("b", "spam", "llm:m")], round_=0)
    store.add_examples([], [NewLabel("a", "ham", "import")])  # an import's label has no round
    store.record_labels([NewLabel("b", "ham", "human:x")], round_=1)
    history = store.label_history()
    assert [(e.source, e.label, e.round) for e in history] == [("llm:m", "spam", 0), ("import", "ham", None),
                                                                ("human:x", "ham", 1)]  # in the order stored
    assert history[0].created_at <= history[1].created_at <= history[2].created_at
    assert [tuple(r) for r in store.example_labels()] == [("a", "text a", "ham", "import"),
                                                         ("b", "text b", "ham", "human:x"),
                                                         ("b", "text b", "spam", "llm:m")]
    assert [r.source for r in store.training_set()] == ["import", "human:x"]  # the best source only, for training


def test_rounds_models_runs_pool_files_and_usage_are_typed_rows_in_column_order(store):
    number, _ = store.open_round()
    store.add_model(1, number, "tfidf-lr", "models/v0001.joblib", 12)
    store.update_round(number, metrics={"accuracy": 0.5}, counts={"queried": 3}, timings={"train": 1.0})
    run = store.start_run("nightly")
    store.finish_run(run, "done", {"round": number})
    store.record_pool_file("/data/day1.csv", 100, 1.5, 10, 9)
    call = {"purpose": "label", "model": "m", "prompt_tokens": 10, "completion_tokens": 2, "cost": 0.5, "latency": 0.25,
            "cached": False, "ok": True, "round": number}
    store.record_llm_calls([call, {**call, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.25, "latency": 0.0,
                                   "cached": True, "ok": False, "round": None}])
    got = {"round": store.round(number), "rounds": store.rounds()[0], "model": store.model(1),
           "latest": store.latest_model(), "run": store.runs("nightly")[0], "pool": store.pool_file("/data/day1.csv"),
           "usage": store.llm_usage()[0], "by_round": store.llm_usage_by_round()[0]}
    kinds = {"round": RoundRow, "rounds": RoundRow, "model": ModelRow, "latest": ModelRow, "run": RunRow,
             "pool": PoolFileRow, "usage": LLMUsage, "by_round": RoundUsage}
    assert {k: type(v) for k, v in got.items()} == kinds
    # The JSON outputs (status --json, report.json) show a row as its dict: one key per column, in column order.
    tables = {RoundRow: rounds, ModelRow: models, RunRow: runs, PoolFileRow: pool_files}
    for key in ("round", "model", "run", "pool"):
        assert list(dataclasses.asdict(got[key])) == [c.name for c in tables[kinds[key]].columns], key
    assert got["round"] == got["rounds"] and got["model"] == got["latest"]
    assert (got["round"].model_version, got["round"].metrics, got["round"].counts, got["round"].status) == (
        1, {"accuracy": 0.5}, {"queried": 3}, "open")
    assert (got["model"].round, got["model"].name, got["model"].n_train) == (number, "tfidf-lr", 12)
    assert (got["run"].id, got["run"].status, got["run"].summary) == (run, "done", {"round": number})
    assert got["run"].finished_at >= got["run"].started_at
    assert as_dicts(store.llm_usage()) == [{"purpose": "label", "model": "m", "calls": 2, "cached": 1, "failed": 1,
                                            "prompt_tokens": 10, "completion_tokens": 2, "cost": 0.75, "latency": 0.25}]
    assert as_dicts(store.llm_usage_by_round()) == [
        {"round": None, "calls": 1, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.25, "latency": 0.0},
        {"round": number, "calls": 1, "prompt_tokens": 10, "completion_tokens": 2, "cost": 0.5, "latency": 0.25}]
    assert store.round(number + 1) is None and store.model(2) is None and store.pool_file("/elsewhere") is None


def test_the_export_is_the_training_sets_real_labels(store):
    store.add_examples(rows("a", "b", "c"))
    store.record_labels([NewLabel("a", "spam", "human:x"), NewLabel("b", "ham", "synthetic:m"),
                         NewLabel("c", "ham", "llm:m")], round_=0)
    assert store.labeled_export() == [TrainingRow("a", "text a", "spam", "human:x"), TrainingRow("c", "text c", "ham", "llm:m")]
