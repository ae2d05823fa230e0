"""Model files on a shared store: every machine can load every version, whoever trained it.

With SQLite the store and the models live in one project folder. Several folders (machines) sharing one
PostgreSQL store each write models into their own folder, yet a round resumed or monitored on another machine
loads the versions the first one trained; so on a shared store each saved version (and its featurizer) is
copied into the store, and a missing file is restored from there before it is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from synthloop.store import Store


def publish(store: Store, root: Path, model_path: Path, featurizer_file: str | None) -> None:
    """Copy a saved model (and the featurizer file beside it) into a shared store; nothing for SQLite."""
    if not store.shared:
        return
    paths = [model_path] + ([model_path.parent / featurizer_file] if featurizer_file else [])
    store.put_files({_name(root, p): p.read_bytes() for p in paths})


def restore(store: Store, root: Path, model_path: Path) -> None:
    """Bring a model another machine trained (and its featurizer) into this folder, if the shared store has it."""
    if not store.shared or model_path.is_file():
        return
    if not _restore_file(store, root, model_path):
        return  # load_model then says the file is missing
    from synthloop.learn.model_files import read_file

    featurizer_file = getattr(read_file(model_path), "featurizer_file_", None)
    if featurizer_file and not (model_path.parent / featurizer_file).is_file():
        _restore_file(store, root, model_path.parent / featurizer_file)


def _name(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _restore_file(store: Store, root: Path, path: Path) -> bool:
    data = store.get_file(_name(root, path))
    if data is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # temp + rename: a kill never leaves half a file
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True
