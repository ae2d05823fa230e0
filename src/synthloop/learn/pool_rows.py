"""The pool as stored feature rows: a later round scores the row chunks on disk as they lie, without walking
the store's million ids or looking each one up.

`pool-<stamp>.npy`, beside a featurizer version's rows (synthloop.learn.feature_rows), lists every pool
example's key with its (chunk, row), sorted by position. The stamp is the store's description of its pool
(count, smallest and largest id: examples are only ever added, never changed or deleted, so the stamp moves
whenever the pool does); a pool that grew gets a new file, built once by walking its ids (and featurizing the new
ones). A round then reads the pool's rows chunk by chunk, drops the examples already labeled or asked
(a few thousand ids, looked up in the index) and scores what is left: memory stays at one chunk.

Keys are the store's ids only when those are 16-character ids (synthloop.data.example_id): a pool imported with
ids of its own has hashed keys, and gets no file (`build` returns None): its rounds walk the store as before.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from synthloop.learn.feature_rows import INDEX, FeatureRows, Texts, row_keys


class PoolRows:
    """Every pool example's stored row: `chunks(taken)` yields (ids, feature rows) of the ones not in `taken`."""

    def __init__(self, rows: FeatureRows, entries: np.ndarray):
        self.rows, self.entries = rows, entries

    def chunks(self, taken: Iterable[str]) -> Iterator[tuple[np.ndarray, object]]:
        """(ids, their feature rows) per stored chunk, the examples in `taken` left out. The ids are ASCII bytes
        (the keys, which build checked are the ids): they sort as the str ids do, and converting a million of
        them to str cost 0.17 s a round; TopK converts the few it keeps."""
        entries = self.entries
        taken = list(taken)
        found, t_chunks, t_rows = self.rows.locate(row_keys(taken)) if taken else (np.zeros(0, bool),) * 3
        t_chunks, t_rows = t_chunks[found], t_rows[found]
        numbers = np.asarray(entries["chunk"])
        bounds = np.flatnonzero(np.diff(numbers)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(entries)]):
            if stop <= start:
                continue
            number = int(numbers[start])
            part = entries[start:stop]
            rows = np.asarray(part["row"])
            keep = ~np.isin(rows, t_rows[t_chunks == number])
            matrix = self.rows.chunk(number)
            whole = keep.all() and len(rows) == matrix.shape[0]  # rows sorted and unique: every row, in order
            X = matrix if whole else matrix[rows[keep]]
            yield np.asarray(part["key"][keep]), X


def pool_file(rows: FeatureRows, stamp: str):
    return rows.dir / f"pool-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.npy"


def load(rows: FeatureRows, stamp: str) -> PoolRows | None:
    """The pool rows written for this stamp, or None."""
    try:
        return PoolRows(rows, np.load(pool_file(rows, stamp), mmap_mode="r"))
    except (OSError, ValueError):  # none yet, or a damaged file: build it again
        return None


def build(rows: FeatureRows, stamp: str, id_pages: Callable[[], Iterable[list[str]]], texts_of: Texts) -> PoolRows | None:
    """Walk the pool's ids (featurizing the ones not stored yet) and write its file; None when the pool's ids
    are not their own keys or the rows cannot be stored (a read-only folder): the caller then walks the store."""
    parts = []
    for ids in id_pages():
        if not ids:
            continue
        keys = row_keys(ids)
        if keys.astype(str).tolist() != ids:
            return None
        where = rows.ensure(ids, keys, texts_of)
        if where is None:
            return None
        part = np.empty(len(ids), dtype=INDEX)
        part["key"], part["chunk"], part["row"] = keys, where[0], where[1]
        parts.append(part)
    entries = np.concatenate(parts) if parts else np.empty(0, dtype=INDEX)
    entries = entries[np.lexsort((entries["row"], entries["chunk"]))]
    path = pool_file(rows, stamp)
    try:
        rows.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}-{os.getpid()}.tmp.npy")
        np.save(tmp, entries)
        os.replace(tmp, path)
        for old in rows.dir.glob("pool-*.npy"):  # an older pool's file: its rows are all in this one
            if old != path and ".tmp" not in old.name:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # not kept: the next round builds it again
    return PoolRows(rows, entries)
