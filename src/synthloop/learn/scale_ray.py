"""The Ray engine of synthloop.learn.scale: the pool scored in blocks on a local Ray or a cluster, the same top-k
as the local engine (the same TopK order), with a local Ray started here reaped if the run is killed."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import joblib

from synthloop.errors import SynthloopError, Unavailable
from synthloop.learn.pool_chunks import FILE_KINDS, TopK, batch_columns, csv_options, score_chunk


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


def import_ray():
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
        ids, texts = batch_columns(batch, Path("pool"), self.text_col, self.id_col)
        out_ids, scores, out_texts = score_chunk(bundle["model"], ids, texts, self.measure, self.keep,
                                                 bundle["exclude"], self.with_texts)
        result = {"id": out_ids, "score": scores}
        if self.with_texts:
            result["text"] = out_texts
        return result


def score_ray(model, files: list[Path] | str | None, chunks: Iterable | None, measure: str, keep: int,
               exclude: frozenset, with_texts: bool, address: str | None, chunk_size: int, n_jobs: int,
               text_col: str, id_col: str | None, ray_notes: Path | None = None) -> TopK:
    from synthloop.learn import ray_local

    ray = import_ray()
    # A local Ray this call starts is marked, so that a run killed before ray.shutdown leaves nothing behind.
    with ray_local.owned(ray_notes if not ray.is_initialized() and not address else None):
        return _score_ray_on(ray, model, files, chunks, measure, keep, exclude, with_texts, address, chunk_size,
                             n_jobs, text_col, id_col)


def _score_ray_on(ray, model, files, chunks, measure, keep, exclude, with_texts, address, chunk_size, n_jobs,
                  text_col, id_col) -> TopK:
    from synthloop.checkpoint import checkpoint

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
            datasets.append(ray.data.read_csv(paths, **extensions, **csv_options(kind, text_col, id_col)))
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
