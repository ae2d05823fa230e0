"""Feature rows on disk, computed once per example and featurizer version, read by every later round.

A featurizer version is what the rows depend on: the model name, the featurizer's settings and, for a
featurizer that learns a vocabulary (TF-IDF), the texts it was fitted on (`featurizer_version`). Its rows live
in `.synthloop/feature_rows/<version hash>/`, in append-only chunks of at most CHUNK_ROWS rows, each a folder
of plain `.npy` files (CSR `data`/`indices`/`indptr`, or `dense` for embeddings) that are memory-mapped when
read: a round reads the pages of the rows it asks for, not the whole store, and no process parses a file.
(`.npz` archives cannot be memory-mapped; reading all rows back took the same time either way, benchmarks/scale.md.)
`index.npy` maps each example's key (its store id) to (chunk, row), sorted for binary search. Rows the index
lacks (new pool examples) are featurized and appended as new chunks, so a pool that grows is featurized
incrementally. A chunk folder, and then the index, are written under temporary names and renamed into place:
a process killed mid-write leaves at worst an orphan folder, never a row that reads wrong.

The fitted featurizer itself is saved once beside the models (`save_model`), under a name derived from the
same version key, and `fitted_featurizer` finds it there, so a later CLI process loads it instead of refitting.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from synthloop.learn.model_files import featurizer_file, load_featurizer

ROWS_DIR = "feature_rows"
CHUNK_ROWS = 50_000
KEY_BYTES = 16  # store ids are 16 hex characters (synthloop.data.example_id); other ids are hashed to that
INDEX = np.dtype([("key", f"S{KEY_BYTES}"), ("chunk", "<i4"), ("row", "<i4")])
# The texts of the examples asked for: a list beside the ids, or a function that fetches the texts of the ids it
# is given (a later round asks for a million stored rows and should read no text at all).
Texts = Sequence[str] | Callable[[list[str]], list[str]]
# TextClassifier parameters that change what the featurizer computes; the others shape only the classifier.
FEATURIZER_PARAMS = ("name", "embed_model", "embed_weight", "max_chars")


def featurizer_version(model, fit_texts: Sequence[str]) -> str:
    """The key of the featurizer `model.fit_featurizer(fit_texts)` would make: equal keys, equal rows."""
    import sklearn

    from synthloop.learn.models import make_featurizer, texts_key

    params = model.get_params()
    settings = {k: params[k] for k in FEATURIZER_PARAMS if k in params}
    blank = make_featurizer(model.name, params.get("embed_model"), max_chars=params.get("max_chars"))
    # The unfitted featurizer's own settings (n-gram ranges, max_features, ...), so a code change that alters
    # them is a new version too; estimator objects are described by their own parameters, which follow.
    settings["featurizer"] = sorted((k, repr(v)) for k, v in blank.get_params(deep=True).items()
                                    if not hasattr(v, "get_params"))
    settings["sklearn"] = sklearn.__version__
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=repr).encode()).hexdigest()[:16]
    return f"{model.name}:{params.get('embed_model')}:{digest}:{texts_key(fit_texts)}"


def fitted_featurizer(models_dir: Path, key: str):
    """The featurizer of version `key` saved by an earlier process, or None when there is none to reuse."""
    path = Path(models_dir) / featurizer_file(key)
    if not path.is_file():
        return None
    try:
        return load_featurizer(path)
    except Exception:  # a file from another scikit-learn, or damaged: fitting again is always correct
        return None


def row_keys(ids: Sequence[str]) -> np.ndarray:
    """Fixed-width keys: the store id itself, or (task examples, test rows) a hash of the longer id."""
    if set(map(len, ids)) <= {KEY_BYTES}:
        try:
            return np.asarray(ids, dtype=f"S{KEY_BYTES}")  # the pool: every id a store id
        except UnicodeEncodeError:
            pass
    out = [i if len(i) == KEY_BYTES and i.isascii() else hashlib.sha1(i.encode("utf-8", "surrogatepass")).hexdigest()[:KEY_BYTES]
           for i in ids]
    return np.asarray(out, dtype=f"S{KEY_BYTES}")


class FeatureRows:
    """The rows of one featurizer version: `get(ids, texts)` reads stored rows and featurizes (and stores) the rest."""

    def __init__(self, root: Path, key: str, featurizer, chunk_rows: int = CHUNK_ROWS):
        self.dir = Path(root) / hashlib.sha1(key.encode()).hexdigest()[:16]
        self.key, self.featurizer, self.chunk_rows = key, featurizer, chunk_rows
        self.featurized = 0  # rows this object computed (the rest were read)

    # reading ------------------------------------------------------------------------------------
    # The index and the chunks are mapped afresh by each call and unmapped when it returns, not kept: the pages
    # of a live mapping count in the process's memory, and a round that reads a 5M-row pool chunk by chunk must
    # not end up holding all of them. Mapping a file costs microseconds; its pages stay in the page cache.
    def index(self) -> np.ndarray:
        try:
            return np.load(self.dir / "index.npy", mmap_mode="r")  # the latest: another process may have appended
        except FileNotFoundError:
            return np.empty(0, dtype=INDEX)

    def chunk(self, number: int):
        """Chunk `number`, memory-mapped: a CSR matrix or a dense array over the files, no copy."""
        folder = self.dir / f"chunk-{number:06d}"
        if (folder / "dense.npy").is_file():
            return np.load(folder / "dense.npy", mmap_mode="r")
        data, indices, indptr = (np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("data", "indices", "indptr"))
        width = int(json.loads((folder / "meta.json").read_text())["width"])
        # Memory-mapped arrays wrapped without a copy; indexing rows below copies only those rows.
        return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, width), copy=False)

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, chunk, row) for each key."""
        index = self.index()
        if not len(index) or not len(keys):
            return np.zeros(len(keys), bool), np.zeros(len(keys), np.int32), np.zeros(len(keys), np.int32)
        stored = index["key"]
        pos = np.searchsorted(stored, keys)
        pos = np.minimum(pos, len(index) - 1)
        found = stored[pos] == keys
        return found, np.asarray(index["chunk"][pos]), np.asarray(index["row"][pos])

    def read(self, chunks: np.ndarray, rows: np.ndarray):
        """The stored rows at (chunk, row), in that order."""
        order = np.lexsort((rows, chunks))
        ordered = bool(np.all(order[1:] > order[:-1])) if len(order) > 1 else True
        pieces = []
        sorted_chunks, sorted_rows = chunks[order], rows[order]
        bounds = np.flatnonzero(np.diff(sorted_chunks)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(order)]):
            if stop > start:
                pieces.append(self.chunk(int(sorted_chunks[start]))[sorted_rows[start:stop]])
        matrix = _stack(pieces)
        if ordered:  # the common case (a pool read in id order, stored in id order): no second copy
            return matrix
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return matrix[inverse]

    def get(self, ids: Sequence[str], texts: Texts):
        """Feature rows of the examples (ids with their texts), as the featurizer makes them. Only the texts of
        rows not stored yet are asked for when `texts` is a function."""
        ids = list(ids)
        if not ids:
            return self.featurizer.transform(all_texts(ids, texts))
        where = self.ensure(ids, row_keys(ids), texts)
        if where is None:  # a read-only project folder, a full disk: featurize without storing
            return self.featurizer.transform(all_texts(ids, texts))
        return self.read(*where)

    def ensure(self, ids: list[str], keys: np.ndarray, texts: Texts) -> tuple[np.ndarray, np.ndarray] | None:
        """(chunk, row) of each example, featurizing and storing the rows not stored yet; None when they
        cannot be stored (a read-only folder, a full disk)."""
        found, chunks, rows = self.locate(keys)
        if found.all():
            return chunks, rows
        missing = np.flatnonzero(~found)
        # One row per key even if an id is asked for twice in one call.
        _, first = np.unique(keys[missing], return_index=True)
        new = missing[first].tolist()
        new_texts = [texts[i] for i in new] if not callable(texts) else texts([ids[i] for i in new])
        try:
            self.append(keys[new], new_texts)
        except OSError:
            return None
        found, chunks, rows = self.locate(keys)
        return (chunks, rows) if found.all() else None  # not all found: the index could not be written

    # writing ------------------------------------------------------------------------------------
    def append(self, keys: np.ndarray, texts: list[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        added = []
        for start in range(0, len(texts), self.chunk_rows):
            part = slice(start, start + self.chunk_rows)
            matrix = self.featurizer.transform(texts[part])
            self.featurized += matrix.shape[0]
            number = self._write_chunk(matrix)
            entries = np.empty(matrix.shape[0], dtype=INDEX)
            entries["key"], entries["chunk"], entries["row"] = keys[part], number, np.arange(matrix.shape[0])
            added.append(entries)
        self._write_index(np.concatenate(added))

    def _write_chunk(self, matrix) -> int:
        numbers = [int(p.name.split("-")[1]) for p in self.dir.glob("chunk-*") if p.name.split("-")[1].isdigit()]
        number = max(numbers, default=0) + 1
        tmp = self.dir / f"tmp-{os.getpid()}-{number}"
        tmp.mkdir()
        if sp.issparse(matrix):
            matrix = sp.csr_matrix(matrix)
            matrix.sort_indices()
            # One index dtype for indices and indptr: scipy would otherwise copy both to a common one on read.
            dtype = np.int32 if matrix.nnz < 2**31 and matrix.shape[1] < 2**31 else np.int64
            np.save(tmp / "data.npy", matrix.data)
            np.save(tmp / "indices.npy", matrix.indices.astype(dtype, copy=False))
            np.save(tmp / "indptr.npy", matrix.indptr.astype(dtype, copy=False))
            (tmp / "meta.json").write_text(json.dumps({"width": int(matrix.shape[1])}))
        else:
            np.save(tmp / "dense.npy", np.asarray(matrix))
        while True:
            try:
                os.rename(tmp, self.dir / f"chunk-{number:06d}")
                return number
            except OSError:  # another process took the number meanwhile
                if not (self.dir / f"chunk-{number:06d}").exists():
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                number += 1

    def _write_index(self, added: np.ndarray) -> None:
        merged = np.concatenate([np.asarray(self.index()), added])
        merged = merged[np.argsort(merged["key"], kind="stable")]
        # A key stored twice (two processes featurizing the same new rows) keeps its first row.
        if len(merged) > 1:
            merged = merged[np.r_[True, merged["key"][1:] != merged["key"][:-1]]]
        tmp = self.dir / f"index-{os.getpid()}.tmp.npy"
        np.save(tmp, merged)
        os.replace(tmp, self.dir / "index.npy")

    def size(self) -> int:
        return len(self.index())

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file()) if self.dir.is_dir() else 0


def all_texts(ids: list[str], texts: Texts) -> list[str]:
    """The texts of `ids`, fetched if `texts` is a function."""
    return texts(ids) if callable(texts) else list(texts)


def _stack(pieces: list):
    if not pieces:
        return sp.csr_matrix((0, 0))
    if len(pieces) == 1:
        return pieces[0] if sp.issparse(pieces[0]) else np.asarray(pieces[0])
    if sp.issparse(pieces[0]):
        return sp.vstack(pieces, format="csr")
    return np.vstack(pieces)


def prune(root: Path, keep: Sequence[str]) -> int:
    """Delete the row stores of every version but `keep` (keys); returns the bytes freed."""
    wanted = {hashlib.sha1(k.encode()).hexdigest()[:16] for k in keep}
    freed = 0
    for folder in Path(root).glob("*"):
        if folder.is_dir() and folder.name not in wanted:
            freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
    return freed
