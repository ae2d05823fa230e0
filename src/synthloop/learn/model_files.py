"""Model files: a classifier saved as one file per version, its featurizer once beside it (versions sharing a
featurizer share the file), written through a temporary file and a rename, read back with the paths of this
project folder.
"""

from __future__ import annotations

import copy
import hashlib
import os
import pickle
from functools import lru_cache
from pathlib import Path

import joblib

from synthloop import old_paths
from synthloop.config import STATE_DIR
from synthloop.errors import SynthloopError
from synthloop.learn.models import FEATURES, TextClassifier

# Model files name the embedding store (STATE_DIR/features) relative to the state dir they are in, so a copied or
# moved project (or another machine's folder on a shared store) uses its own store, never the folder it was
# trained in.


def _saved_store(store: str | None, state_dir: Path) -> str | None:
    if store and Path(store).resolve() == (state_dir / FEATURES).resolve():
        return FEATURES
    return store


def _loaded_store(store: str | None, state_dir: Path) -> str | None:
    if not store:
        return store
    where = Path(store)
    if not where.is_absolute():
        return str(state_dir / where)
    if where.parts[-2:] == (STATE_DIR, FEATURES) and state_dir.name == STATE_DIR:
        return str(state_dir / FEATURES)  # saved with an absolute path by synthloop before 2026-12-02
    return store


def _with_store(obj, attr: str, store: str | None):
    """A shallow copy of obj with another store path, for writing: the live object may be in use elsewhere."""
    if getattr(obj, attr, None) == store:
        return obj
    obj = copy.copy(obj)
    setattr(obj, attr, store)
    return obj


def featurizer_file(key: str) -> str:
    """The file name of a featurizer version's file beside the models (a later process reuses it by key)."""
    return f"featurizer-{hashlib.sha1(key.encode()).hexdigest()[:16]}.joblib"


def save_model(model: TextClassifier, path: Path) -> None:
    """Write the classifier, and its featurizer once beside it: versions that share a featurizer share
    the file. Temporary file plus rename, so a crash never leaves a half-written model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dir = path.parent.parent
    featurizer = model.featurizer_
    name = featurizer_file(getattr(model, "featurizer_key_", None) or str(id(featurizer)))
    if not (path.parent / name).exists():
        _atomic_dump(_with_store(featurizer, "store", _saved_store(getattr(featurizer, "store", None), state_dir)),
                     path.parent / name)
    model.featurizer_file_ = name
    saved = _with_store(model, "feature_dir", _saved_store(model.feature_dir, state_dir))
    if saved is model:
        saved = copy.copy(model)
    saved.featurizer_ = None
    _atomic_dump(saved, path)


# Model files are plain pickles (protocol 5) behind this first line. joblib's loader unpickles in pure Python:
# a 2.5 MB TF-IDF featurizer took 0.25-0.42 s to load against 0.03 s for the C unpickler, most of a later
# CLI round's own work (measured idle, examples/sms_spam). Files without the line are older joblib files.
MAGIC = b"synthloop-model pickle-5\n"


def _atomic_dump(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as file:
        file.write(MAGIC)
        pickle.dump(obj, file, protocol=5)
    os.replace(tmp, path)


def read_file(path: Path):
    """What _atomic_dump wrote, or an older joblib file. Unpickling runs code from the file: only a project's
    own files are read this way (`export-model` writes skops for files from elsewhere)."""
    old_paths.install()
    with open(path, "rb") as file:
        if file.read(len(MAGIC)) == MAGIC:
            return pickle.load(file)
    return joblib.load(path)


@lru_cache(maxsize=4)
def load_featurizer(path: Path):
    featurizer = read_file(path)
    if getattr(featurizer, "store", None):
        featurizer.store = _loaded_store(featurizer.store, Path(path).parent.parent)
    return featurizer


def load_model(path: str | Path) -> TextClassifier:
    path = Path(path)
    if not path.is_file():
        raise SynthloopError(f"model file {path} is missing; run `synthloop train` to make a new version")
    try:
        model = read_file(path)
    except Exception as err:  # noqa: BLE001 - truncated or overwritten: pickle says so in many ways
        raise SynthloopError(f"model file {path} is damaged ({type(err).__name__}); run `synthloop train` to make a "
                             "new version from the labels in the store") from None
    model.feature_dir = _loaded_store(getattr(model, "feature_dir", None), path.parent.parent)
    if model.featurizer_ is None:
        model.featurizer_ = load_featurizer(path.parent / model.featurizer_file_)
    used = vars(model).pop("used_columns_", None)
    if used is not None:  # saved before 2026-12-01, fitted on a column slice: widen it once, as fits are now
        from synthloop.learn.sparse_fit import widen

        widen(model.clf_, used, model.transform(["a"]).shape[1])
    return model
