"""A feature store for sentence embeddings: each text is embedded once per embedding model, then read from disk.

One SQLite file per embedding model (`<dir>/embeddings-<model>.sqlite`), keyed by the SHA-1 of the text, so
every round, every process and `predict` reuse what any of them computed; a new pool row is embedded the first
time a round needs it. SQLite because several processes may read while one writes, and a killed process
leaves either a whole row or none. Vectors are float32 bytes; the file records the model name and dimension,
and a file made by another model is refused rather than read.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from synthloop.errors import SynthloopError

# SQLite's default limit on bound parameters per statement is 32766; lookups go in slices below it.
LOOKUP_SLICE = 900


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()


def store_path(folder: str | Path, model: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"
    return Path(folder) / f"embeddings-{safe}.sqlite"


class EmbeddingStore:
    """Embeddings of one model, on disk. `get_or_compute(texts, compute)` is the one entry point rounds use."""

    def __init__(self, folder: str | Path, model: str):
        self.path = store_path(folder, model)
        self.model = model
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('model', ?)", (model,))
        stored = self._db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()[0]
        if stored != model:
            raise SynthloopError(f"{self.path} holds embeddings of {stored!r}, not {model!r}; delete it to rebuild it")

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def _dim(self) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
        return int(row[0]) if row else None

    def lookup(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), LOOKUP_SLICE):
            part = unique[i:i + LOOKUP_SLICE]
            marks = ",".join("?" * len(part))
            for key, vec in self._db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", part):
                found[key] = np.frombuffer(vec, dtype=np.float32)
        return found

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        dim = self._dim()
        if dim is not None and vectors.shape[1] != dim:
            raise SynthloopError(f"{self.path} holds {dim}-dimensional embeddings, not {vectors.shape[1]}; delete it to rebuild it")
        with self._db:  # one transaction: all of these rows or none
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('dim', ?)", (str(vectors.shape[1]),))
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                 ((k, v.tobytes()) for k, v in zip(keys, vectors)))

    def get_or_compute(self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors for texts, in order: stored ones read, the others computed (each distinct text once) and stored."""
        keys = [text_key(t) for t in texts]
        found = self.lookup(keys)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            first: dict[bytes, str] = {}
            for k, t in zip(keys, texts):
                first.setdefault(k, t)
            new = np.asarray(compute([first[k] for k in missing]), dtype=np.float32)
            self.put(missing, new)
            found.update(zip(missing, new))
        if not keys:
            dim = self._dim()
            return np.zeros((0, dim or 0), dtype=np.float32)
        return np.vstack([found[k] for k in keys])
