"""The store on SQLite: pages by index range scans, chunked IN queries, migrations of older stores
(tests/test_store.py covers the dialect-sensitive behaviour on SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlalchemy as sa

from synthloop.store import IN_CHUNK, Store, examples, in_chunks


def fill(store: Store, n: int) -> list[str]:
    ids = [f"{i:06d}" for i in range(n)]
    store.add_examples([{"id": i, "text": f"text {i}", "origin": "pool", "split": "pool"} for i in ids])
    return ids


def test_pool_pages_are_index_range_scans(tmp_path):
    store = Store.open(tmp_path / "s.db")
    fill(store, 3000)
    page = store._unlabeled_pool_select().where(examples.c.id > "000100").limit(50)
    sql = str(page.compile(store.engine, compile_kwargs={"literal_binds": True}))
    with store.engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    assert "SEARCH examples USING INDEX ix_examples_split_id (split=? AND id>?)" in plan, plan
    chunks = list(store.unlabeled_pool_chunks(700))
    assert [len(ids) for ids, _ in chunks] == [700] * 4 + [200]
    assert [i for ids, _ in chunks for i in ids] == store.unlabeled_pool()[0]
    store.close()


def test_in_queries_go_in_chunks_below_sqlites_parameter_cap(tmp_path):
    store = Store.open(tmp_path / "s.db")
    ids = fill(store, 2 * IN_CHUNK + 5)
    assert [len(c) for c in in_chunks(ids)] == [IN_CHUNK, IN_CHUNK, 5]
    assert store.existing_ids(ids + ["missing"]) == dict.fromkeys(ids, "pool")
    assert store.origins(ids) == dict.fromkeys(ids, "pool")
    store.close()


def test_an_older_store_gets_the_new_columns_and_index_and_loses_its_old_scale_scores(tmp_path):
    path = tmp_path / "old.db"
    store = Store.open(path)
    store.save_scores(1, "margin", {"a": -0.01})  # margin as -(p1 - p2): the scale before schema 3
    store.set_meta("schema_version", 2)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_examples_split_id")
        conn.exec_driver_sql("ALTER TABLE queries DROP COLUMN reason")
        conn.exec_driver_sql("ALTER TABLE models DROP COLUMN metrics")
    store.close()

    store = Store.open(path)
    inspector = sa.inspect(store.engine)
    assert "reason" in {c["name"] for c in inspector.get_columns("queries")}
    assert "metrics" in {c["name"] for c in inspector.get_columns("models")}
    assert "ix_examples_split_id" in {ix["name"] for ix in inspector.get_indexes("examples")}
    assert store.cached_scores(1, "margin") == {} and store.get_meta("schema_version") >= 5
    store.close()
