"""Rounds, model versions and nightly runs: the pool files a run imported, the scores it cached, its record."""

from __future__ import annotations

import time

import sqlalchemy as sa

from synthloop.store.base import StoreBase
from synthloop.store.rows import ModelRow, PoolFileRow, RoundRow, RunRow
from synthloop.store.schema import models, pool_files, rounds, runs, scores


class RoundMethods(StoreBase):
    """Store's rounds, models and nightly runs part."""

    def next_round_number(self) -> int:
        """The round that work done now feeds: the unfinished one, else the next."""
        with self.engine.connect() as conn:
            last = conn.execute(sa.select(rounds).order_by(rounds.c.number.desc()).limit(1)).first()
        return 0 if last is None else last.number + (last.status == "done")

    # nightly runs: pool files seen, cached scores, run records ---------------------------------------
    def pool_file(self, path: str) -> PoolFileRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(pool_files).where(pool_files.c.path == path)).first()
        return PoolFileRow(**row._mapping) if row else None

    def record_pool_file(self, path: str, size: int, mtime: float, rows: int, added: int) -> None:
        values = {"size": size, "mtime": mtime, "rows": rows, "added": added, "imported_at": time.time()}
        # An upsert, not delete + insert: two machines recording one path at once would both insert.
        stmt = self._dialect.insert(pool_files).values(path=path, **values)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=[pool_files.c.path], set_=values))

    def cached_scores(self, model_version: int, strategy: str) -> dict[str, float]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(scores.c.example_id, scores.c.uncertainty)
                                .where(scores.c.model_version == model_version, scores.c.strategy == strategy))
            return dict(rows.all())

    def scored_ids(self, strategy: str) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(scores.c.example_id).where(scores.c.strategy == strategy).distinct()).scalars())

    def latest_scored_version(self, strategy: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(scores.c.model_version)).where(scores.c.strategy == strategy)).scalar()

    def save_scores(self, model_version: int, strategy: str, values: dict[str, float]) -> None:
        rows = [{"example_id": k, "model_version": model_version, "strategy": strategy, "uncertainty": v} for k, v in values.items()]
        with self.engine.begin() as conn:
            self._insert_ignore(conn, scores, rows)

    def start_run(self, kind: str) -> int:
        with self.engine.begin() as conn:
            key = conn.execute(runs.insert().values(kind=kind, status="running", started_at=time.time())).inserted_primary_key
        assert key is not None  # a single-row insert always has one
        return key[0]

    def mark_killed_runs(self, kind: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.kind == kind, runs.c.status == "running").values(status="killed"))

    def finish_run(self, run_id: int, status: str, summary: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(status=status, summary=summary, finished_at=time.time()))

    def runs(self, kind: str | None = None) -> list[RunRow]:
        stmt = sa.select(runs).order_by(runs.c.id)
        if kind:
            stmt = stmt.where(runs.c.kind == kind)
        with self.engine.connect() as conn:
            return [RunRow(**r._mapping) for r in conn.execute(stmt)]

    # rounds and models --------------------------------------------------------------------------
    def open_round(self) -> tuple[int, bool]:
        """The round to work on: the unfinished one if a run stopped midway (resumed=True), else a new one.
        On a shared store this process first takes the round lock, so machines run rounds one after another
        (see _hold_round_lock)."""
        self._hold_round_lock()
        with self.engine.begin() as conn:
            last = conn.execute(sa.select(rounds).order_by(rounds.c.number.desc()).limit(1)).first()
            if last is not None and last.status != "done":
                return last.number, True
            number = 0 if last is None else last.number + 1
            conn.execute(rounds.insert().values(number=number, status="open", started_at=time.time(), timings={}, counts={}))
            return number, False

    def current_round(self) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(rounds.c.number))).scalar()

    def round(self, number: int) -> RoundRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(rounds).where(rounds.c.number == number)).first()
        return RoundRow(**row._mapping) if row else None

    def rounds(self) -> list[RoundRow]:
        with self.engine.connect() as conn:
            return [RoundRow(**r._mapping) for r in conn.execute(sa.select(rounds).order_by(rounds.c.number))]

    def update_round(self, number: int, **values) -> None:
        with self.engine.begin() as conn:
            conn.execute(rounds.update().where(rounds.c.number == number).values(**values))
        if values.get("status") == "done":
            self._release_round()

    def add_model(self, version: int, round_: int | None, name: str, path: str, n_train: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(models.insert().values(version=version, round=round_, name=name, path=path, n_train=n_train,
                                                created_at=time.time()))
            if round_ is not None:
                conn.execute(rounds.update().where(rounds.c.number == round_).values(model_version=version))

    def set_model_metrics(self, version: int, metrics: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(models.update().where(models.c.version == version).values(metrics=metrics))

    def next_model_version(self) -> int:
        with self.engine.connect() as conn:
            return (conn.execute(sa.select(sa.func.max(models.c.version))).scalar() or 0) + 1

    def latest_model(self) -> ModelRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).order_by(models.c.version.desc()).limit(1)).first()
        return ModelRow(**row._mapping) if row else None

    def model(self, version: int) -> ModelRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models).where(models.c.version == version)).first()
        return ModelRow(**row._mapping) if row else None
