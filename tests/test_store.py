"""The store's dialect-sensitive behaviour, on SQLite and on a real PostgreSQL server (the `db` fixture)."""

from __future__ import annotations

import json
import math

import pytest
import sqlalchemy as sa

from synthloop.store import NewLabel, Store


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
    assert store.round(0)["metrics"] == {"accuracy": 0.75, "kappa": None, "nested": {"inf": None, "list": [1.5, None, "x"]}}
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
    assert (got["size"], got["mtime"], got["rows"], got["added"]) == (6 * 2**30, 2.5, 12, 2)


def test_run_ids_autoincrement_and_meta_upsert(store):
    assert [store.start_run("nightly"), store.start_run("nightly")] == [1, 2]
    store.set_meta("k", {"a": 1})
    store.set_meta("k", {"a": 2})
    store.record_llm_calls([{"purpose": "label", "model": "m", "cost": 0.25, "round": 0}], {"job:x": {"state": "done"}})
    assert store.get_meta("k") == {"a": 2} and store.meta_with_prefix("job:") == {"job:x": {"state": "done"}}
    assert store.llm_usage()[0]["cost"] == 0.25 and store.llm_cost_since(0) == 0.25


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
