"""Score a pool too big for memory and keep only the top-k: chunk by chunk, on every core or on a Ray cluster.

Memory is bounded by (chunks in flight x chunk_size) plus k candidates, whatever the pool size. Rows are
ranked by (score descending, id ascending), a total order, so the k best of a chunk's k best are the k best
overall: any chunking, any worker order and either engine select the same ids.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import joblib

from synthloop.errors import SynthloopError
from synthloop.learn import active
from synthloop.learn.measures import MEASURES
from synthloop.learn.pool_chunks import TopK, file_chunks, score_chunk, source_files

STRATEGIES = (*MEASURES, "ranked-batch")
# The same cap as active.ranked_batch, so the streamed path selects what it would on the whole pool.
ranked_batch_candidates = active.ranked_batch_candidates
# The local engine scores this many rows in the calling process before it starts any worker: a worker process
# re-imports synthloop and loads the model (seconds), so a pool this small is faster in one process. Measured on
# 2 shared cores (load 7-9), same picks: 5k rows 0.3 s in-process vs 5.1 s with 2 workers, 20k 0.6-1.3 vs
# 6.5-7.6 s, 100k 6.7-7.1 vs 19.9-24.7 s (docs/scale.md).
INLINE_ROWS = 100_000


# Top-k under (score desc, id asc) -------------------------------------------------------------------


# Scoring one chunk (runs in workers) ------------------------------------------------------------------


@lru_cache(maxsize=1)
def _load_bundle(path: str):
    # Loaded once per worker process; mmap lets every worker share the coefficient pages.
    return joblib.load(path, mmap_mode="r")


def _score_from_file(bundle_path: str, ids, texts, measure: str, keep: int, with_texts: bool):
    bundle = _load_bundle(bundle_path)
    return score_chunk(bundle["model"], ids, texts, measure, keep, bundle["exclude"], with_texts)


# Reading sources in chunks ------------------------------------------------------------------------


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
