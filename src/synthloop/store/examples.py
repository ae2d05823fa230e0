"""Examples: adding them (with the labels they came with), the pool a strategy chooses from, the test set."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import sqlalchemy as sa

from synthloop.store.labels import LabelMethods
from synthloop.store.rows import NewLabel, in_chunks
from synthloop.store.schema import examples, labels, queries

ID_PAGE_ROWS = 50_000  # ids per keyset page when a pool's ids are walked


def _real_pool():
    """The pool a strategy chooses from: pool rows, synthetic ones aside."""
    return (examples.c.split == "pool") & (examples.c.origin != "synthetic")


def _taken_selects() -> tuple[sa.Select, sa.Select]:
    """The ids the unlabeled pool leaves out: those with a real (not synthetic) label, and those with a query."""
    return sa.select(labels.c.example_id).where(~labels.c.source.like("synthetic%")), sa.select(queries.c.example_id)


class ExampleMethods(LabelMethods):
    """Store's examples part (it adds the labels examples come with, hence LabelMethods)."""

    def add_examples(self, rows: Sequence[dict], new_labels: Sequence[NewLabel] = (), round_: int | None = None) -> int:
        """Insert examples (and labels that came with them, made in `round_`) in one transaction; returns how
        many were new."""
        now = time.time()
        for row in rows:
            row.setdefault("meta", None)
            row.setdefault("gold", None)
            row.setdefault("created_at", now)
        with self.engine.begin() as conn:
            added = self._insert_ignore(conn, examples, rows)
            self._write_labels(conn, new_labels, round_=round_)
        return added

    def synthetic_added(self, round_: int) -> dict[str, int]:
        """Synthetic labels per class made in a round (its top-up), counted from the store: right after a
        crash too, which a tally kept beside the round would miss."""
        stmt = (sa.select(labels.c.label, sa.func.count()).where(labels.c.round == round_)
                .where(labels.c.source.like("synthetic:%")).group_by(labels.c.label))
        with self.engine.connect() as conn:
            return {row[0]: row[1] for row in conn.execute(stmt)}

    def existing_ids(self, ids: Iterable[str]) -> dict[str, str]:
        """Map of id -> split for the ids already stored."""
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in in_chunks(ids):
                for row in conn.execute(sa.select(examples.c.id, examples.c.split).where(examples.c.id.in_(chunk))):
                    found[row.id] = row.split
        return found

    def count_examples(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            stmt = sa.select(examples.c.split, examples.c.origin, sa.func.count()).group_by(examples.c.split, examples.c.origin)
            return {(s, o): n for s, o, n in conn.execute(stmt)}

    def test_set(self) -> tuple[list[str], list[str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(examples.c.text, examples.c.gold)
                .where(examples.c.split == "test", examples.c.gold.is_not(None))
                .order_by(examples.c.id)
            ).all()
        return [r.text for r in rows], [r.gold for r in rows]

    @staticmethod
    def _unlabeled_pool_select(*columns: sa.Column):
        labeled, queried = _taken_selects()
        return (
            sa.select(*(columns or (examples.c.id, examples.c.text)))
            .where(_real_pool())
            .where(examples.c.id.not_in(labeled), examples.c.id.not_in(queried))
            .order_by(examples.c.id)
        )

    def unlabeled_pool(self, limit: int | None = None) -> tuple[list[str], list[str]]:
        """Pool examples with no label and no query yet: the candidates a strategy chooses from."""
        stmt = self._unlabeled_pool_select()
        if limit:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [r.id for r in rows], [r.text for r in rows]

    def unlabeled_pool_chunks(self, chunk_size: int = 50_000) -> Iterator[tuple[list[str], list[str]]]:
        """The same examples as unlabeled_pool, as (ids, texts) chunks in id order, one chunk in memory at a time.
        Keyset pagination (id > the last id seen), not OFFSET: each page is an index range scan, so the cost per
        page stays flat however deep into a large pool it is; and each page is its own short read, so no read
        transaction stays open while the caller scores a chunk."""
        for rows in self._unlabeled_pages(chunk_size, examples.c.id, examples.c.text):
            yield [r[0] for r in rows], [r[1] for r in rows]

    def unlabeled_pool_ids(self, chunk_size: int = 50_000) -> Iterator[list[str]]:
        """The ids of unlabeled_pool_chunks alone, in the same chunks: a round whose feature rows are stored
        needs no texts, and reading 1M texts costs most of a later round (texts_of fetches the few it needs)."""
        yield from self._unlabeled_pages(chunk_size, examples.c.id)

    def _unlabeled_pages(self, chunk_size: int, *columns: sa.Column) -> Iterator[list]:
        yield from self._id_pages(lambda: self._unlabeled_pool_select(*columns), chunk_size, len(columns))

    def _id_pages(self, select: Callable[[], sa.Select], chunk_size: int, n_columns: int) -> Iterator[list]:
        """Keyset pages (id > the last id seen) of `select()`, a query ordered by id whose first column is the id:
        plain tuples (one column: plain values). The DB-API's rows, not SQLAlchemy's Row objects: wrapping a
        million ids in Rows cost more CPU than the query itself (measured on a 1M pool)."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        one = n_columns == 1
        last = None
        while True:
            stmt = select()
            if last is not None:
                stmt = stmt.where(examples.c.id > last)
            with self.engine.connect() as conn:
                result = conn.execute(stmt.limit(chunk_size))
                raw = result.cursor.fetchall()
                rows = [r[0] for r in raw] if one else [tuple(r) for r in raw]
            if not rows:
                return
            yield list(rows)
            if len(rows) < chunk_size:
                return
            last = rows[-1] if one else rows[-1][0]

    def pool_stamp(self) -> str:
        """What the pool holds, in a few bytes: its size and its smallest and largest id. Examples are only ever
        added (never changed or deleted), so the stamp changes whenever the pool does; the feature rows of a
        pool (synthloop.learn.pool_rows) are kept under it."""
        stmt = sa.select(sa.func.count(), sa.func.min(examples.c.id), sa.func.max(examples.c.id)).where(_real_pool())
        with self.engine.connect() as conn:
            count, first, last = conn.execute(stmt).one()
        return f"{count}:{first}:{last}"

    def pool_ids(self, chunk_size: int = ID_PAGE_ROWS) -> Iterator[list[str]]:
        """Every pool id (labeled, asked or not; synthetic rows aside), in id order, in keyset pages."""
        yield from self._id_pages(lambda: sa.select(examples.c.id).where(_real_pool()).order_by(examples.c.id), chunk_size, 1)

    def taken_ids(self) -> set[str]:
        """The ids unlabeled_pool leaves out: examples with a real (not synthetic) label or a query."""
        with self.engine.connect() as conn:
            return {eid for select in _taken_selects() for eid in conn.execute(select).scalars()}

    def texts_of(self, example_ids: Sequence[str]) -> list[str]:
        """The texts of these examples, in the order given (every id must be stored)."""
        found = self._column_by_id(examples.c.text, example_ids)
        return [found[i] for i in example_ids]

    def stop_set(self, n: int) -> tuple[list[str], list[str]]:
        """A fixed sample of the pool (ids are hashes, so the first n by id are a random-looking sample)."""
        stmt = (sa.select(examples.c.id, examples.c.text).where(_real_pool())
                .order_by(examples.c.id).limit(n))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [r.id for r in rows], [r.text for r in rows]

    def pool_texts_sample(self, n: int, seed: int) -> list[str]:
        """`random.Random(seed).sample` of the pool's texts in id order, reading ids and only the n texts drawn:
        sample() draws positions from the population's length alone, so drawing from range(count) picks the same
        positions, and a 5M-row pool is never held as texts."""
        pool = examples.c.split == "pool"
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(examples).where(pool)).scalar_one()
            if count <= n:
                return list(conn.execute(sa.select(examples.c.text).where(pool).order_by(examples.c.id)).scalars())
        import random

        drawn = random.Random(seed).sample(range(count), n)
        wanted, at = set(drawn), {}
        position = 0
        # The ids at the drawn positions, keyset pages over the (split, id) index.
        for page in self._id_pages(lambda: sa.select(examples.c.id).where(pool).order_by(examples.c.id), ID_PAGE_ROWS, 1):
            for offset, eid in enumerate(page):
                if position + offset in wanted:
                    at[position + offset] = eid
            position += len(page)
        return self.texts_of([at[i] for i in drawn])

    def _column_by_id(self, column: sa.Column, example_ids: Sequence[str]) -> dict[str, str]:
        out = {}
        with self.engine.connect() as conn:
            for chunk in in_chunks(example_ids):
                rows = conn.execute(sa.select(examples.c.id, column).where(examples.c.id.in_(chunk)))
                out.update({r.id: getattr(r, column.name) for r in rows if getattr(r, column.name) is not None})
        return out

    def origins(self, example_ids: Sequence[str]) -> dict[str, str]:
        return self._column_by_id(examples.c.origin, example_ids)

    def gold_for(self, example_ids: Sequence[str]) -> dict[str, str]:
        return self._column_by_id(examples.c.gold, example_ids)
