"""A pool in chunks, and the top-k of its scores: the pieces both engines of synthloop.learn.scale (every core)
and synthloop.learn.scale_ray (Ray) share. Rows are ranked by (score descending, id ascending), a total order, so
the k best of each chunk's k best are the k best overall, whatever the chunking or the order of the workers."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from synthloop.data import example_id
from synthloop.errors import SynthloopError
from synthloop.learn.measures import top_k, uncertainty

FILE_KINDS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}


class TopK:
    """A running top-k over merged partial results; holds at most k rows (plus one partial) at a time."""

    def __init__(self, k: int, with_texts: bool = False):
        self.k, self.with_texts = k, with_texts
        self.ids = np.array([], dtype=str)
        self.scores = np.array([], dtype=float)
        self.texts = np.array([], dtype=object) if with_texts else None

    def add(self, ids, scores, texts=None) -> None:
        if len(ids) == 0:
            return
        ids = np.concatenate([self.ids, np.asarray(ids, dtype=str)])
        scores = np.concatenate([self.scores, np.asarray(scores, dtype=float)])
        if self.with_texts:
            texts = np.concatenate([self.texts, np.asarray(texts, dtype=object)])
        # A text repeated across chunks has one id: keep it once.
        ids, first = np.unique(ids, return_index=True)
        self.ids, self.scores, self.texts = top_k(ids, scores[first], self.k, None if texts is None else texts[first])


def score_chunk(model, ids: Sequence[str] | None, texts: Sequence, measure: str, keep: int,
                exclude: frozenset = frozenset(), with_texts: bool = False):
    """(ids, scores, texts or None) of the chunk's `keep` most uncertain rows. Texts are stripped and ids
    derived from them exactly as on import, so ids match the store's."""
    texts = [t.strip() if isinstance(t, str) else "" for t in texts]
    if ids is None:
        ids = [example_id(t) for t in texts]
    rows: dict[str, int] = {}
    for i, (eid, text) in enumerate(zip(ids, texts)):
        if text and eid and eid not in exclude and eid not in rows:
            rows[eid] = i
    if not rows:
        return np.array([], dtype=str), np.array([], dtype=float), (np.array([], dtype=object) if with_texts else None)
    kept = [texts[i] for i in rows.values()]
    scores = uncertainty(measure, model.predict_proba_features(model.transform(kept)))
    return top_k(np.array(list(rows), dtype=str), scores, keep, np.array(kept, dtype=object) if with_texts else None)


def source_files(source: str | os.PathLike) -> list[Path]:
    text = str(source)
    if "://" in text:
        raise SynthloopError(f"{text}: the local engine reads local files only; use engine='ray' (its workers read "
                             "object stores) or copy the files to this machine")
    if glob.has_magic(text):
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True))
    elif Path(text).is_dir():
        paths = sorted(p for p in Path(text).iterdir() if p.suffix.lower() in FILE_KINDS)
    else:
        paths = [Path(text)]
    if not paths:
        raise SynthloopError(f"no pool files match {text!r}; give a Parquet/CSV file, a folder of them or a glob")
    for path in paths:
        if not path.is_file():
            raise SynthloopError(f"{path} does not exist; check the path")
        if path.suffix.lower() not in FILE_KINDS:
            raise SynthloopError(f"{path}: unsupported pool file type {path.suffix!r}; use .parquet, .csv or .tsv "
                                 "(convert JSONL to Parquet first: it cannot be streamed in chunks)")
    return paths


def csv_options(kind: str, text_col: str, id_col: str | None):
    import pyarrow as pa
    from pyarrow import csv

    columns = [text_col] + ([id_col] if id_col else [])
    return {
        # Quoted texts may hold newlines; both engines must parse them the same way.
        "parse_options": csv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True),
        "convert_options": csv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=columns),
    }


def batch_columns(batch, path: Path, text_col: str, id_col: str | None):
    import pyarrow as pa

    names = batch.schema.names
    for option, column in (("text_col", text_col), ("id_col", id_col)):
        if column is not None and column not in names:
            raise SynthloopError(f"{path} has no column {column!r} (columns: {', '.join(names)}); pass {option}=one of them")
    texts = batch.column(names.index(text_col)).to_pylist()
    if id_col is None:
        return None, texts
    ids = batch.column(names.index(id_col)).cast(pa.string()).to_pylist()
    return [("" if i is None else i.strip()) for i in ids], texts


def _file_batches(path: Path, chunk_size: int, text_col: str, id_col: str | None):
    import pyarrow.parquet as pq
    from pyarrow import csv

    kind = FILE_KINDS[path.suffix.lower()]
    if kind == "parquet":
        file = pq.ParquetFile(path)
        missing = [c for c in (text_col, id_col) if c and c not in file.schema_arrow.names]
        if missing:
            raise SynthloopError(f"{path} has no column {missing[0]!r} (columns: {', '.join(file.schema_arrow.names)}); "
                                 "pass text_col/id_col with one of them")
        yield from file.iter_batches(batch_size=chunk_size, columns=[c for c in (text_col, id_col) if c])
    else:
        try:
            yield from csv.open_csv(path, **csv_options(kind, text_col, id_col))
        except KeyError as err:  # pyarrow's message for a column that include_columns cannot find
            raise SynthloopError(f"{path}: {err.args[0] if err.args else err}; pass text_col/id_col naming its columns") from None


def file_chunks(paths: Sequence[Path], chunk_size: int, text_col: str = "text",
                id_col: str | None = None) -> Iterator[tuple[list[str] | None, list[str]]]:
    """(ids or None, texts) chunks of at most chunk_size rows, streamed: one Arrow batch in memory at a time."""
    ids_buf: list[str] = []
    texts_buf: list[str] = []
    for path in paths:
        for batch in _file_batches(path, chunk_size, text_col, id_col):
            ids, texts = batch_columns(batch, path, text_col, id_col)
            texts_buf.extend(texts)
            if ids is not None:
                ids_buf.extend(ids)
            while len(texts_buf) >= chunk_size:
                yield (ids_buf[:chunk_size] if id_col else None), texts_buf[:chunk_size]
                del texts_buf[:chunk_size], ids_buf[:chunk_size]
    if texts_buf:
        yield (ids_buf if id_col else None), texts_buf
