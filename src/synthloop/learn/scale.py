"""Score a pool too big for memory and keep only the top-k: chunk by chunk, on every core or on a Ray cluster.

Memory is bounded by (chunks in flight x chunk_size) plus k candidates, whatever the pool size. Rows are
ranked by (score descending, id ascending), a total order, so the k best of a chunk's k best are the k best
overall: any chunking, any worker order and either engine select the same ids.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import joblib
import numpy as np

from synthloop.data import example_id
from synthloop.errors import SynthloopError
from synthloop.learn import active
from synthloop.learn.measures import MEASURES, top_k, uncertainty

STRATEGIES = (*MEASURES, "ranked-batch")
FILE_KINDS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv"}
# The same cap as active.ranked_batch, so the streamed path selects what it would on the whole pool.
ranked_batch_candidates = active.ranked_batch_candidates
# The local engine scores this many rows in the calling process before it starts any worker: a worker process
# re-imports synthloop and loads the model (seconds), so a pool this small is faster in one process. Measured on
# 2 shared cores (load 7-9), same picks: 5k rows 0.3 s in-process vs 5.1 s with 2 workers, 20k 0.6-1.3 vs
# 6.5-7.6 s, 100k 6.7-7.1 vs 19.9-24.7 s (docs/scale.md).
INLINE_ROWS = 100_000


# Top-k under (score desc, id asc) -------------------------------------------------------------------

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


# Scoring one chunk (runs in workers) ------------------------------------------------------------------

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


@lru_cache(maxsize=1)
def _load_bundle(path: str):
    # Loaded once per worker process; mmap lets every worker share the coefficient pages.
    return joblib.load(path, mmap_mode="r")


def _score_from_file(bundle_path: str, ids, texts, measure: str, keep: int, with_texts: bool):
    bundle = _load_bundle(bundle_path)
    return score_chunk(bundle["model"], ids, texts, measure, keep, bundle["exclude"], with_texts)


# Reading sources in chunks ------------------------------------------------------------------------

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


# Engines ------------------------------------------------------------------------------------------

def _score_local(model, chunks: Iterable, measure: str, keep: int, exclude: frozenset, with_texts: bool, n_jobs: int) -> TopK:
    best = TopK(keep, with_texts)
    n_jobs = joblib.effective_n_jobs(n_jobs)
    chunks, inline = iter(chunks), 0
    for ids, texts in chunks:
        if n_jobs > 1 and inline >= INLINE_ROWS:
            chunks = itertools.chain([(ids, texts)], chunks)  # a big pool: the rest goes to the workers
            break
        best.add(*score_chunk(model, ids, texts, measure, keep, exclude, with_texts))
        inline += len(texts)
    else:
        return best
    # The model goes to the workers once, as a file they memory-map, not pickled with every chunk.
    folder = tempfile.mkdtemp(prefix="synthloop-scale-")
    try:
        bundle = os.path.join(folder, "bundle.joblib")
        joblib.dump({"model": model, "exclude": exclude}, bundle)
        parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered", pre_dispatch="2*n_jobs")
        for result in parallel(joblib.delayed(_score_from_file)(bundle, ids, texts, measure, keep, with_texts)
                               for ids, texts in chunks):
            best.add(*result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return best


# Entry point --------------------------------------------------------------------------------------

def check_streamable(strategy: str, engine: str = "local") -> None:
    if strategy not in STRATEGIES:
        raise SynthloopError(f"strategy {strategy!r} cannot be streamed; choose one of {', '.join(STRATEGIES)}")
    if engine not in ("local", "ray"):
        raise SynthloopError(f"unknown engine {engine!r}; choose 'local' or 'ray'")


def most_uncertain(model, source, measure: str = "margin", k: int = 100, engine: str = "local",
                   address: str | None = None, chunk_size: int = 50_000, n_jobs: int = -1,
                   exclude_ids: Iterable[str] | None = None, text_col: str = "text", id_col: str | None = None,
                   with_texts: bool = False, ray_notes: Path | None = None) -> TopK:
    """The k examples of the source with the highest uncertainty under the measure (synthloop.learn.measures), as a
    TopK (ids, scores and, with_texts, texts), best first."""
    check_streamable(measure, engine)
    if chunk_size <= 0:
        raise SynthloopError(f"chunk_size must be positive, not {chunk_size}")
    exclude = frozenset(exclude_ids or ())
    files: str | list[Path] | None = None
    chunks: Iterable | None = None
    if not isinstance(source, (str, os.PathLike)):
        chunks = source
    elif engine == "ray" and "://" in str(source):
        files = str(source)
    else:
        files = source_files(source)  # checked before any worker starts
    if k <= 0:
        return TopK(0, with_texts)
    if engine == "ray":
        from synthloop.learn.scale_ray import score_ray

        return score_ray(model, files, chunks, measure, k, exclude, with_texts, address, chunk_size, n_jobs,
                          text_col, id_col, ray_notes)
    if isinstance(files, list):  # the local engine's files are local: source_files refused a URL
        chunks = file_chunks(files, chunk_size, text_col, id_col)
    return _score_local(model, chunks if chunks is not None else (), measure, k, exclude, with_texts, n_jobs)


def score_pool(model, source, strategy: str = "margin", k: int = 100, engine: str = "local", address: str | None = None,
               chunk_size: int = 50_000, n_jobs: int = -1, exclude_ids: Iterable[str] | None = None,
               text_col: str = "text", id_col: str | None = None,
               training_texts: Sequence[str] | None = None, ray_notes: Path | None = None) -> list[tuple[str, float]]:
    """The k pool examples to label next, as (id, score), best first.

    `model`: a fitted TextClassifier. `source`: Parquet/CSV/TSV path, folder or glob (ids from `id_col`, else
    the store's hash of the text), or an iterable of (ids or None, texts) chunks. Scores are the measure
    registry's (synthloop.learn.measures): higher = less sure, in [0, 1]. `ranked-batch` streams the most uncertain
    candidates by least-confident, then runs modAL's diversity step on them (scores: their least-confident);
    `training_texts` (the labeled set) lets it favour candidates unlike what is already labeled.
    `ray_notes`: a folder (the project's .synthloop) where a local Ray started here is noted, so that the next
    run reaps it if this one is killed (synthloop.learn.ray_local).
    """
    if strategy == "cold-start":  # its k-means phase needs the whole pool at once: streamed, it is margin
        strategy = "margin"
    check_streamable(strategy, engine)
    if k <= 0:
        return []
    ranked = strategy == "ranked-batch"
    measure, keep = ("least-confident", ranked_batch_candidates(k)) if ranked else (strategy, k)
    best = most_uncertain(model, source, measure, keep, engine, address, chunk_size, n_jobs, exclude_ids,
                          text_col, id_col, with_texts=ranked, ray_notes=ray_notes)
    if not ranked:
        return [(str(i), float(s)) for i, s in zip(best.ids, best.scores)]
    if len(best.ids) == 0:
        return []
    X_training = model.transform(list(training_texts)) if training_texts else None
    assert best.texts is not None  # asked for with_texts=ranked
    picked = active.ranked_batch_among(active.FittedView(model, X_training), model.transform(list(best.texts)), k)
    return [(str(best.ids[i]), float(best.scores[i])) for i in picked]
