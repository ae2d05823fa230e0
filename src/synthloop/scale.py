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

from synthloop import active
from synthloop.data import example_id
from synthloop.errors import SynthloopError, Unavailable
from synthloop.measures import MEASURES, top_k, uncertainty

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


def _csv_options(kind: str, text_col: str, id_col: str | None):
    import pyarrow as pa
    from pyarrow import csv

    columns = [text_col] + ([id_col] if id_col else [])
    return {
        # Quoted texts may hold newlines; both engines must parse them the same way.
        "parse_options": csv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True),
        "convert_options": csv.ConvertOptions(column_types={c: pa.string() for c in columns}, include_columns=columns),
    }


def _columns(batch, path: Path, text_col: str, id_col: str | None):
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
            yield from csv.open_csv(path, **_csv_options(kind, text_col, id_col))
        except KeyError as err:  # pyarrow's message for a column that include_columns cannot find
            raise SynthloopError(f"{path}: {err.args[0] if err.args else err}; pass text_col/id_col naming its columns") from None


def file_chunks(paths: Sequence[Path], chunk_size: int, text_col: str = "text",
                id_col: str | None = None) -> Iterator[tuple[list[str] | None, list[str]]]:
    """(ids or None, texts) chunks of at most chunk_size rows, streamed: one Arrow batch in memory at a time."""
    ids_buf: list[str] = []
    texts_buf: list[str] = []
    for path in paths:
        for batch in _file_batches(path, chunk_size, text_col, id_col):
            ids, texts = _columns(batch, path, text_col, id_col)
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


class RayUnreachable(Unavailable):
    """Nothing answers at the Ray address: the cluster is down (try again later) or the address is wrong."""


def check_ray_address(address: str, timeout: float = 10.0) -> None:
    """Fail at once, naming the fix, when nothing listens at a host:port address: ray.init would wait for
    minutes on an unreachable head (measured: over 3 minutes with Ray 2.60), which a nightly job must not."""
    import socket

    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise RayUnreachable(f"cannot reach a Ray cluster at {address!r} ({err.strerror or err}); check that the "
                             "cluster is up and that the address is its head's host:port (6379 by default)") from None


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SynthloopError("engine='ray' needs Ray Data: pip install 'synthloop[ray]' (or 'ray[data]' aiohttp)") from None
    return ray


# Set for the duration of a call only (the context is the driver's, shared with the caller's own datasets).
RAY_DATA_SETTINGS = {
    # A nightly job's log wants the selection, not a progress line per block.
    "enable_progress_bars": False,
    "print_on_execution_start": False,
    # Blocks of a few chunks instead of 128 MB: a read worker's memory stays near a chunk's (measured on 1M
    # texts: 1.8 GB peak for the whole Ray tree instead of 2.2 GB, and no slower).
    "target_max_block_size": 16 * 2**20,
}
_RAY_BUNDLES: dict[str, dict] = {}


def _ray_bundle(holder: list) -> dict:
    # One deserialization per worker process; numpy arrays come zero-copy from the object store.
    key = holder[0].hex()
    if key not in _RAY_BUNDLES:
        import ray

        _RAY_BUNDLES.clear()
        _RAY_BUNDLES[key] = ray.get(holder[0])
    return _RAY_BUNDLES[key]


class _RayScorer:
    """map_batches function: an Arrow batch in, its top rows out (id, score, and text for ranked-batch)."""

    def __init__(self, holder, measure, keep, with_texts, text_col, id_col):
        self.holder, self.measure, self.keep, self.with_texts = holder, measure, keep, with_texts
        self.text_col, self.id_col = text_col, id_col

    def __call__(self, batch):
        bundle = _ray_bundle(self.holder)
        ids, texts = _columns(batch, Path("pool"), self.text_col, self.id_col)
        out_ids, scores, out_texts = score_chunk(bundle["model"], ids, texts, self.measure, self.keep,
                                                 bundle["exclude"], self.with_texts)
        result = {"id": out_ids, "score": scores}
        if self.with_texts:
            result["text"] = out_texts
        return result


def _score_ray(model, files: list[Path] | str | None, chunks: Iterable | None, measure: str, keep: int,
               exclude: frozenset, with_texts: bool, address: str | None, chunk_size: int, n_jobs: int,
               text_col: str, id_col: str | None, ray_notes: Path | None = None) -> TopK:
    from synthloop import ray_local

    ray = _import_ray()
    # A local Ray this call starts is marked, so that a run killed before ray.shutdown leaves nothing behind.
    with ray_local.owned(ray_notes if not ray.is_initialized() and not address else None):
        return _score_ray_on(ray, model, files, chunks, measure, keep, exclude, with_texts, address, chunk_size,
                             n_jobs, text_col, id_col)


def _score_ray_on(ray, model, files, chunks, measure, keep, exclude, with_texts, address, chunk_size, n_jobs,
                  text_col, id_col) -> TopK:
    from synthloop.round import checkpoint

    started = not ray.is_initialized()
    if started:
        # "local": a new Ray for this call alone. Without it ray.init attaches to whatever cluster this machine
        # started last (/tmp/ray/ray_current_cluster), someone else's perhaps, and refuses num_cpus there.
        options = {"address": address} if address else {"address": "local", "num_cpus": joblib.effective_n_jobs(n_jobs),
                                                         "include_dashboard": False}
        if address:
            check_ray_address(address)
        try:
            ray.init(log_to_driver=False, **options)
        except ConnectionError as err:
            raise RayUnreachable(f"cannot reach a Ray cluster at {address!r} ({err}); check that the cluster is up and "
                                 "that the address is its head's host:port (6379 by default)") from None
        checkpoint("ray-started", 0)
    context = ray.data.DataContext.get_current()
    saved = {name: getattr(context, name) for name in RAY_DATA_SETTINGS}
    try:
        for name, value in RAY_DATA_SETTINGS.items():
            setattr(context, name, value)
        holder = [ray.put({"model": model, "exclude": exclude})]  # in a list so Ray passes the ref, not the value
        best = TopK(keep, with_texts)
        if files is not None:
            scorer = _RayScorer(holder, measure, keep, with_texts, text_col, id_col)
            _merge(best, _ray_dataset(ray, files, text_col, id_col).map_batches(
                scorer, batch_size=chunk_size, batch_format="pyarrow"))
            return best
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        for tables in _windows(chunks, window):
            scorer = _RayScorer(holder, measure, keep, with_texts, "text", "id" if "id" in tables[0].column_names else None)
            # One chunk is one block is one batch: each chunk's top rows come back, as from the files' blocks.
            _merge(best, ray.data.from_arrow(tables).map_batches(scorer, batch_size=None, batch_format="pyarrow"))
        return best
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        if started:
            ray.shutdown()


def _merge(best: TopK, dataset) -> None:
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        best.add(batch["id"], batch["score"], batch.get("text"))


def _windows(chunks: Iterable, size: int) -> Iterator[list]:
    """Chunks from the caller (the project's store, which only the driver can read) as lists of up to `size`
    Arrow tables, each list one Ray Data dataset scored before the next is read: the object store holds one
    window of the pool at a time. A window holds chunks of one kind (with ids, or ids made from the texts)."""
    import pyarrow as pa

    window: list = []
    for ids, texts in chunks:
        columns = {"text": pa.array([t if isinstance(t, str) else None for t in texts], pa.string())}
        if ids is not None:
            columns["id"] = pa.array([str(i) for i in ids], pa.string())
        table = pa.table(columns)
        if window and (len(window) >= size or window[0].column_names != table.column_names):
            yield window
            window = []
        window.append(table)
    if window:
        yield window


def _ray_dataset(ray, files: list[Path] | str, text_col: str, id_col: str | None):
    groups: dict[str, list[str]] = {}
    if isinstance(files, str):
        # An object store URI (s3://, gs://, ...): the workers read it; the driver need not see it.
        groups[FILE_KINDS.get(Path(files).suffix.lower(), "parquet")] = [files]
    else:
        for path in files:
            groups.setdefault(FILE_KINDS[path.suffix.lower()], []).append(str(path.resolve()))
    columns = [c for c in (text_col, id_col) if c]
    datasets = []
    for kind, paths in groups.items():
        extensions = {} if isinstance(files, str) else {"file_extensions": None}
        if kind == "parquet":
            datasets.append(ray.data.read_parquet(paths, **extensions).select_columns(columns))
        else:
            datasets.append(ray.data.read_csv(paths, **extensions, **_csv_options(kind, text_col, id_col)))
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


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
    """The k examples of the source with the highest uncertainty under the measure (synthloop.measures), as a
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
        return _score_ray(model, files, chunks, measure, k, exclude, with_texts, address, chunk_size, n_jobs,
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
    registry's (synthloop.measures): higher = less sure, in [0, 1]. `ranked-batch` streams the most uncertain
    candidates by least-confident, then runs modAL's diversity step on them (scores: their least-confident);
    `training_texts` (the labeled set) lets it favour candidates unlike what is already labeled.
    `ray_notes`: a folder (the project's .synthloop) where a local Ray started here is noted, so that the next
    run reaps it if this one is killed (synthloop.ray_local).
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
