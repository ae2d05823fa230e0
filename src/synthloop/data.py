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
        reader = pd.read_json(path, lines=True, dtype=False, encoding="utf-8-sig", chunksize=batch_rows)
    else:
        reader = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                             na_values=[""], encoding="utf-8-sig", chunksize=batch_rows)
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

def _clean(value: str) -> str:
    return value.replace("\x00", "").strip()  # NUL bytes are no text, and break printing and SQLite's C strings


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not _clean(value))


def _batch(raw: dict[str, list], start: int, text_col: str, label_col: str | None, id_col: str | None) -> Batch:
    texts = [_clean(t) if isinstance(t, str) else "" for t in raw[text_col]]
    labels: list[str | None] = [None] * len(texts)
    if label_col:
        labels = [None if _blank(v) else str(v).strip() for v in raw[label_col]]
    if id_col:
        ids = ["" if _blank(v) else str(v).strip() for v in raw[id_col]]
    else:
        ids = [example_id(t) if t else "" for t in texts]
    return Batch(start, ids, texts, labels)


def _text_problem(value) -> str:
    """Why a raw text value is no text."""
    if value is None or isinstance(value, float) and np.isnan(value):
        return "no text (the cell is empty or the key is missing)"
    if isinstance(value, bytes):
        return "the text is binary data, not a string"
    if isinstance(value, bool | int | float):
        return f"the text is a number ({value!r}), not a string: is --text-col the right column?"
    if isinstance(value, list | dict | tuple):
        return f"the text is a {type(value).__name__}, not a string: is --text-col the right column?"
    if isinstance(value, str) and "\x00" in value:
        return "the text holds only NUL bytes and spaces"
    if isinstance(value, str):
        return "the text is empty or only spaces"
    return f"the text is a {type(value).__name__}, not a string"


def line_of(path: Path, row: int) -> str:
    """Where a 0-based data row is in the file, as its reader sees it."""
    kind = FORMATS.get(path.suffix.lower())
    if kind in ("csv", "tsv"):
        return f"line {row + 2}"  # after the header line
    if kind == "jsonl":
        return f"line {row + 1}"
    return f"row {row + 1}"


@dataclass
class _Problems:
    """Every row the first pass found wrong (file row, reason), in file order."""

    rows: list[tuple[int, str]] = field(default_factory=list)
    unknown_labels: set[str] = field(default_factory=set)

    def add(self, raw: dict[str, list], batch: Batch, text_col: str, id_col: str | None,
            allowed_labels: list[str] | None) -> None:
        for k, (text, label, id_) in enumerate(zip(batch.texts, batch.labels, batch.ids)):
            if not text:
                self.rows.append((batch.start + k, _text_problem(raw[text_col][k])))
            elif allowed_labels is not None and label is not None and label not in allowed_labels:
                self.unknown_labels.add(label)
                self.rows.append((batch.start + k, f"label {label!r} is not in the task (task labels: {allowed_labels})"))
            elif not id_:
                self.rows.append((batch.start + k, f"the id column {id_col!r} is empty"))

    def mask(self, n: int) -> np.ndarray:
        valid = np.ones(n, dtype=bool)
        valid[[row for row, _ in self.rows]] = False
        return valid

    def raise_any(self, path: Path) -> None:
        if not self.rows:
            return
        shown = "; ".join(f"{line_of(path, row)}: {why}" for row, why in self.rows[:5])
        more = f" (and {len(self.rows) - 5} more)" if len(self.rows) > 5 else ""
        raise SynthloopError(f"{path}: {len(self.rows)} row(s) cannot be imported — {shown}{more}. Fix or remove them, "
                             "or pass --skip-invalid to import the rest (every skipped row is listed)")


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


def _first_rows(path: Path, ids_all: np.ndarray, text_hashes: np.ndarray | None, labels_all: np.ndarray | None,
                valid: np.ndarray, problems: _Problems | None) -> np.ndarray:
    """A mask of the first valid row of each id; an id given to two different texts is an error. One text
    with two different labels is a conflict: an error, or with `problems` (an --skip-invalid import) every
    row of that text is skipped and listed, since nothing says which label is right."""
    # Every row valid (the usual case): no index arrays beyond the sort, so the check stays ~25 bytes a row.
    rows = None if valid.all() else np.flatnonzero(valid)
    ids = ids_all if rows is None else ids_all[rows]
    order = np.argsort(ids, kind="stable")  # stable: within an id, the earliest row comes first
    ordered = ids[order]
    del ids
    at = order if rows is None else rows[order]  # the file row at each sorted position
    del order, rows
    same = ordered[1:] == ordered[:-1]
    if text_hashes is not None and same.any():
        hashes = text_hashes[at]
        clash = same & (hashes[1:] != hashes[:-1]).any(axis=1)
        if clash.any():
            bad = bytes(ordered[1:][clash][0]).decode("utf-8", "surrogatepass")
            raise SynthloopError(f"{path}: id {bad!r} is used for two different texts; ids must be unique")
    if labels_all is not None and same.any():
        labels = labels_all[at]
        differ = same & (labels[1:] != labels[:-1]) & (labels[1:] != b"") & (labels[:-1] != b"")
        if differ.any():
            conflicted = np.unique(ordered[1:][differ])
            bad_rows = np.sort(at[np.isin(ordered, conflicted)])
            if problems is None:
                shown = ", ".join(line_of(path, int(r)) for r in bad_rows[:6])
                raise SynthloopError(f"{path}: {len(conflicted)} text(s) appear with two different labels ({shown}); "
                                     "keep the right label and remove the other rows, pass --first-label-wins to keep "
                                     "each text's first label, or --skip-invalid to leave those texts out")
            problems.rows += [(int(r), "the same text has another label elsewhere in the file") for r in bad_rows]
            valid = valid.copy()
            valid[bad_rows] = False
            return _first_rows(path, ids_all, text_hashes, labels_all, valid, problems)  # no conflict is left now
    keep = np.zeros(len(valid), dtype=bool)
    keep[at[np.concatenate([[True], ~same])]] = True
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
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why) of each row left out

    @property
    def duplicates(self) -> int:
        return self.rows - int(self.keep.sum()) - len(self.skipped)

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
            yield Batch(batch.start, [v for v, k in zip(batch.ids, keep) if k], [v for v, k in zip(batch.texts, keep) if k],
                        [v for v, k in zip(batch.labels, keep) if k])


def _wanted(text_col: str, label_col: str | None, id_col: str | None) -> dict[str, str]:
    wanted = {"--text-col": text_col, "--label-col": label_col, "--id-col": id_col}
    return {option: column for option, column in wanted.items() if column is not None}


def scan_table(path: str | Path, text_col: str = "text", label_col: str | None = None, id_col: str | None = None,
               allowed_labels: list[str] | None = None, skip_invalid: bool = False,
               first_label_wins: bool = False) -> TablePlan:
    """The first pass: every check on every row, streamed. Holds one batch, plus each row's id (8 bytes for
    the hash ids; with id_col, its bytes and a 16-byte hash of its text) for the duplicate check, not the texts.
    With skip_invalid, bad rows are left out and listed in the plan's `skipped` instead of refusing the file.
    A text given two different labels is refused (or skipped), unless first_label_wins keeps its first row."""
    path = Path(path)
    batch_rows = IMPORT_BATCH_ROWS
    problems = _Problems()
    keys, hashes, labels, rows = [], [], [], 0
    for raw in raw_batches(path, _wanted(text_col, label_col, id_col), batch_rows):
        batch = _batch(raw, rows, text_col, label_col, id_col)
        rows += len(batch.texts)
        problems.add(raw, batch, text_col, id_col, allowed_labels)
        keys.append(_keys(batch.ids, id_col))
        if id_col is not None:
            hashes.append(_text_hashes(batch.texts))
        if label_col is not None and not first_label_wins:
            labels.append(np.array([(lab or "").encode("utf-8", "surrogatepass") for lab in batch.labels], dtype=bytes))
    if rows == 0:
        raise SynthloopError(f"{path} has no rows; give a file with at least one example")
    if not skip_invalid:
        problems.raise_any(path)
    ids_all = np.concatenate(keys)
    keys.clear()  # the batches' arrays are freed once joined
    keep = _first_rows(path, ids_all, np.concatenate(hashes) if hashes else None,
                       np.concatenate(labels) if labels else None, problems.mask(rows),
                       problems if skip_invalid else None)
    skipped = [(line_of(path, row), why) for row, why in sorted(problems.rows)]
    if skip_invalid and len(skipped) == rows:
        raise SynthloopError(f"{path}: no row can be imported (first: {skipped[0][0]}: {skipped[0][1]})")
    return TablePlan(path, text_col, label_col, id_col, batch_rows, rows, keep, skipped)


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
