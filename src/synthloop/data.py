"""Reading pools and test sets (CSV, JSONL, Parquet) into validated rows with stable ids, in a stream.

A file is read twice, batch by batch, and never whole: the first pass checks every row (so bad input is
refused before anything is stored) and finds repeated ids; the second hands out the first row of each id,
batch by batch, for the store. Parquet is read in Arrow record batches, CSV/TSV and JSONL in pandas chunks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from synthloop.errors import SynthloopError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
# Rows per batch: what one pass holds in memory at a time, plus ~25 bytes a row for the duplicate check.
IMPORT_BATCH_ROWS = 50_000


def example_id(text: str) -> str:
    """Stable id: the same text always gets the same id, so re-importing adds nothing twice."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class Table:
    ids: list[str]
    texts: list[str]
    labels: list[str | None]
    duplicates: int  # rows dropped because an earlier row of the file had the same id


@dataclass
class Batch:
    start: int  # the file row (0-based) of the batch's first row
    ids: list[str]
    texts: list[str]
    labels: list[str | None]


# Reading raw column values, one batch at a time ---------------------------------------------------

def _kind(path: Path) -> str:
    if not path.is_file():
        raise SynthloopError(f"{path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise SynthloopError(f"{path} is empty; give a file with a header row and at least one example")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise SynthloopError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    return kind


def _missing_column(path: Path, column: str, option: str, columns) -> SynthloopError:
    return SynthloopError(f"{path} has no column {column!r} (columns: {', '.join(map(str, columns))}); "
                          f"pass {option} with one of them")


def _check_columns(path: Path, wanted: dict[str, str], columns) -> None:
    names = [str(c) for c in columns]
    for option, column in wanted.items():
        if column not in names:
            raise _missing_column(path, column, option, names)


def _parquet_batches(path: Path, wanted: dict[str, str], batch_rows: int) -> Iterator[dict[str, list]]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    _check_columns(path, wanted, file.schema_arrow.names)
    columns = list(dict.fromkeys(wanted.values()))
    for batch in file.iter_batches(batch_size=batch_rows, columns=columns):
        yield {c: batch.column(c).to_pylist() for c in columns}


def _frame_batches(path: Path, kind: str, wanted: dict[str, str], batch_rows: int) -> Iterator[dict[str, list]]:
    if kind == "jsonl":
        reader = pd.read_json(path, lines=True, dtype=False, encoding="utf-8", chunksize=batch_rows)
    else:
        reader = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                             na_values=[""], encoding="utf-8", chunksize=batch_rows)
    seen: set[str] = set()
    with reader:
        for frame in reader:
            names = [str(c) for c in frame.columns]
            if kind != "jsonl":  # a CSV header names every column up front: refuse before reading on
                _check_columns(path, wanted, names)
            seen.update(names)
            frame.columns = names
            # JSON lines may leave a key out of a whole chunk: its rows have no value there.
            yield {c: frame[c].tolist() if c in names else [None] * len(frame) for c in dict.fromkeys(wanted.values())}
    if kind == "jsonl" and seen:
        _check_columns(path, wanted, sorted(seen))


def raw_batches(path: Path, wanted: dict[str, str], batch_rows: int) -> Iterator[dict[str, list]]:
    """{column: values} for the wanted columns ({option: column}), at most batch_rows rows at a time."""
    kind = _kind(path)
    try:
        if kind == "parquet":
            yield from _parquet_batches(path, wanted, batch_rows)
        else:
            yield from _frame_batches(path, kind, wanted, batch_rows)
    except UnicodeDecodeError as err:
        raise SynthloopError(
            f"{path} is not UTF-8 (byte {err.start}: {err.reason}); re-save it as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`"
        ) from None
    except pd.errors.EmptyDataError:
        raise SynthloopError(f"{path} is empty; give a file with a header row and at least one example") from None
    except (ValueError, pd.errors.ParserError, OSError) as err:  # pyarrow's errors are ValueError / OSError too
        raise SynthloopError(f"{path} could not be read as {kind}: {str(err).splitlines()[0]}; check the file's format") from None


# Rows: stripped texts, labels, ids -----------------------------------------------------------------

def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value.strip())


def _batch(raw: dict[str, list], start: int, text_col: str, label_col: str | None, id_col: str | None) -> Batch:
    texts = [t.strip() if isinstance(t, str) else "" for t in raw[text_col]]
    labels = [None if _blank(v) else str(v).strip() for v in raw[label_col]] if label_col else [None] * len(texts)
    if id_col:
        ids = ["" if _blank(v) else str(v).strip() for v in raw[id_col]]
    else:
        ids = [example_id(t) if t else "" for t in texts]
    return Batch(start, ids, texts, labels)


@dataclass
class _Problems:
    """What the first pass found wrong, reported in the order a reader fixes them."""

    empty_lines: list[int] = field(default_factory=list)
    n_empty: int = 0
    unknown_labels: set[str] = field(default_factory=set)
    empty_ids: int = 0

    def add(self, batch: Batch, allowed_labels: list[str] | None) -> None:
        for k, text in enumerate(batch.texts):
            if not text:
                self.n_empty += 1
                if len(self.empty_lines) < 10:
                    self.empty_lines.append(batch.start + k + 2)  # 1-based, after the header line
        if allowed_labels is not None:
            self.unknown_labels.update(lab for lab in batch.labels if lab is not None and lab not in allowed_labels)
        self.empty_ids += sum(1 for i, t in zip(batch.ids, batch.texts) if t and not i)

    def raise_any(self, path: Path, id_col: str | None, allowed_labels: list[str] | None) -> None:
        if self.n_empty:
            shown = ", ".join(map(str, self.empty_lines)) + (" …" if self.n_empty > 10 else "")
            raise SynthloopError(f"{path}: {self.n_empty} row(s) have an empty text (line {shown}); remove or fill them")
        if self.unknown_labels:
            raise SynthloopError(
                f"{path}: labels {sorted(self.unknown_labels)} are not in the task (task labels: {allowed_labels}); "
                "fix the file or add those labels to the task"
            )
        if self.empty_ids:
            raise SynthloopError(f"{path}: some rows have an empty {id_col!r}; every row needs an id")


def _text_hashes(texts: list[str]) -> np.ndarray:
    # 128 bits a text: two different texts under one id are told apart without keeping the texts.
    digests = b"".join(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts)
    return np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)


def _keys(ids: list[str], id_col: str | None) -> np.ndarray:
    """What the duplicate check keeps of each row's id: the id's own 64 bits when it is the text's hash (16
    hex digits), else the id's bytes (user ids are exact, and short in practice)."""
    if id_col is None:
        return np.array([int(i, 16) if i else 0 for i in ids], dtype=np.uint64)
    return np.array([i.encode("utf-8", "surrogatepass") for i in ids], dtype=bytes)


def _first_rows(path: Path, keys: list[np.ndarray], text_hashes: list[np.ndarray]) -> np.ndarray:
    """A mask of the first row of each id (keys: per batch, emptied here); an id given to two different
    texts is an error."""
    ids = np.concatenate(keys)
    keys.clear()  # the batches' arrays are freed once joined
    order = np.argsort(ids, kind="stable")  # stable: within an id, the earliest row comes first
    ordered = ids[order]
    del ids
    same = ordered[1:] == ordered[:-1]
    if text_hashes and same.any():
        hashes = np.concatenate(text_hashes)[order]
        clash = same & (hashes[1:] != hashes[:-1]).any(axis=1)
        if clash.any():
            bad = bytes(ordered[1:][clash][0]).decode("utf-8", "surrogatepass")
            raise SynthloopError(f"{path}: id {bad!r} is used for two different texts; ids must be unique")
    keep = np.zeros(len(order), dtype=bool)
    keep[order[np.concatenate([[True], ~same])]] = True
    return keep


@dataclass
class TablePlan:
    """A file checked from end to end by the first pass; `batches()` is the second."""

    path: Path
    text_col: str
    label_col: str | None
    id_col: str | None
    batch_rows: int
    rows: int
    keep: np.ndarray  # per file row: the first row with its id

    @property
    def duplicates(self) -> int:
        return self.rows - int(self.keep.sum())

    def batches(self) -> Iterator[Batch]:
        """The first row of each id, batch by batch, in file order."""
        wanted = _wanted(self.text_col, self.label_col, self.id_col)
        start = 0
        for raw in raw_batches(self.path, wanted, self.batch_rows):
            batch = _batch(raw, start, self.text_col, self.label_col, self.id_col)
            start += len(batch.texts)
            if start > self.rows:
                raise SynthloopError(f"{self.path} changed while it was imported; import it again")
            keep = self.keep[batch.start:start]
            yield Batch(batch.start, *([v for v, k in zip(values, keep) if k]
                                       for values in (batch.ids, batch.texts, batch.labels)))


def _wanted(text_col: str, label_col: str | None, id_col: str | None) -> dict[str, str]:
    wanted = {"--text-col": text_col, "--label-col": label_col, "--id-col": id_col}
    return {option: column for option, column in wanted.items() if column is not None}


def scan_table(path: str | Path, text_col: str = "text", label_col: str | None = None, id_col: str | None = None,
               allowed_labels: list[str] | None = None) -> TablePlan:
    """The first pass: every check on every row, streamed. Holds one batch, plus each row's id (8 bytes for
    the hash ids; with id_col, its bytes and a 16-byte hash of its text) for the duplicate check, not the texts."""
    path = Path(path)
    batch_rows = IMPORT_BATCH_ROWS
    problems = _Problems()
    keys, hashes, rows = [], [], 0
    for raw in raw_batches(path, _wanted(text_col, label_col, id_col), batch_rows):
        batch = _batch(raw, rows, text_col, label_col, id_col)
        rows += len(batch.texts)
        problems.add(batch, allowed_labels)
        keys.append(_keys(batch.ids, id_col))
        if id_col is not None:
            hashes.append(_text_hashes(batch.texts))
    if rows == 0:
        raise SynthloopError(f"{path} has no rows; give a file with at least one example")
    problems.raise_any(path, id_col, allowed_labels)
    keep = _first_rows(path, keys, hashes)
    return TablePlan(path, text_col, label_col, id_col, batch_rows, rows, keep)


def read_table(path: str | Path, text_col: str = "text", label_col: str | None = None,
               id_col: str | None = None, allowed_labels: list[str] | None = None) -> Table:
    """The whole file in memory (for small files, e.g. texts to predict); imports stream with scan_table."""
    plan = scan_table(path, text_col, label_col, id_col, allowed_labels)
    ids, texts, labels = [], [], []
    for batch in plan.batches():
        ids += batch.ids
        texts += batch.texts
        labels += batch.labels
    return Table(ids=ids, texts=texts, labels=labels, duplicates=plan.duplicates)
