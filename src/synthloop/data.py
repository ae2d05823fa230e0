"""Reading pools and test sets (CSV, JSONL, Parquet) into validated rows with stable ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from synthloop.errors import SynthloopError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def example_id(text: str) -> str:
    """Stable id: the same text always gets the same id, so re-importing adds nothing twice."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class Table:
    ids: list[str]
    texts: list[str]
    labels: list[str | None]
    duplicates: int  # rows dropped because an earlier row of the file had the same id


def _read(path: Path) -> pd.DataFrame:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise SynthloopError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        if kind == "jsonl":
            return pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        return pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                           na_values=[""], encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SynthloopError(
            f"{path} is not UTF-8 (byte {err.start}: {err.reason}); re-save it as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`"
        ) from None
    except pd.errors.EmptyDataError:
        raise SynthloopError(f"{path} is empty; give a file with a header row and at least one example") from None
    except (ValueError, pd.errors.ParserError, OSError) as err:
        raise SynthloopError(f"{path} could not be read as {kind}: {str(err).splitlines()[0]}; check the file's format") from None


def read_table(path: str | Path, text_col: str = "text", label_col: str | None = None,
               id_col: str | None = None, allowed_labels: list[str] | None = None) -> Table:
    path = Path(path)
    if not path.is_file():
        raise SynthloopError(f"{path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise SynthloopError(f"{path} is empty; give a file with a header row and at least one example")
    frame = _read(path)
    if frame.empty:
        raise SynthloopError(f"{path} has no rows; give a file with at least one example")
    columns = [str(c) for c in frame.columns]
    for option, column in (("--text-col", text_col), ("--label-col", label_col), ("--id-col", id_col)):
        if column is not None and column not in columns:
            raise SynthloopError(f"{path} has no column {column!r} (columns: {', '.join(columns)}); pass {option} with one of them")

    texts = frame[text_col]
    empty = [i + 2 for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" …" if len(empty) > 10 else "")
        raise SynthloopError(f"{path}: {len(empty)} row(s) have an empty text (line {shown}); remove or fill them")
    texts = [t.strip() for t in texts]

    labels: list[str | None] = [None] * len(texts)
    if label_col is not None:
        labels = [None if pd.isna(v) or str(v).strip() == "" else str(v).strip() for v in frame[label_col]]
        if allowed_labels is not None:
            unknown = sorted({lab for lab in labels if lab is not None and lab not in allowed_labels})
            if unknown:
                raise SynthloopError(
                    f"{path}: labels {unknown} are not in the task (task labels: {allowed_labels}); "
                    "fix the file or add those labels to the task"
                )

    if id_col is not None:
        ids = [str(v).strip() for v in frame[id_col]]
        if any(not i or i == "nan" for i in ids):
            raise SynthloopError(f"{path}: some rows have an empty {id_col!r}; every row needs an id")
    else:
        ids = [example_id(t) for t in texts]

    seen: dict[str, str] = {}
    keep = []
    for idx, (eid, text) in enumerate(zip(ids, texts)):
        if eid in seen:
            if id_col is not None and seen[eid] != text:
                raise SynthloopError(f"{path}: id {eid!r} is used for two different texts; ids must be unique")
            continue
        seen[eid] = text
        keep.append(idx)
    return Table(
        ids=[ids[i] for i in keep],
        texts=[texts[i] for i in keep],
        labels=[labels[i] for i in keep],
        duplicates=len(texts) - len(keep),
    )
