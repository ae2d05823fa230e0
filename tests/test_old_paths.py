"""Model files from earlier versions still load and predict the same: those that pickled
`synthloop.models.TextClassifier` (before the modules moved into packages) and joblib files (before 2026-12-02)."""

from __future__ import annotations

import sys

import joblib

from synthloop import old_paths
from synthloop.learn import models
from synthloop.learn.model_files import MAGIC, load_model, save_model
from synthloop.learn.models import TextClassifier


def small_model() -> TextClassifier:
    texts = ["win a prize now", "free cash offer", "see you at lunch", "meeting moved to noon"] * 3
    labels = ["spam", "spam", "ham", "ham"] * 3
    return TextClassifier(labels=["ham", "spam"], name="tfidf-lr").fit(texts, labels)


def test_a_model_saved_under_the_old_module_path_loads(tmp_path, monkeypatch):
    model = small_model()
    path = tmp_path / "models" / "v0001.joblib"
    path.parent.mkdir()
    # Written as an old version wrote it: the class's module is the old path, which resolves while dumping.
    monkeypatch.setattr(TextClassifier, "__module__", "synthloop.models")
    monkeypatch.setitem(sys.modules, "synthloop.models", models)
    featurizer_class = type(model.featurizer_)
    if featurizer_class.__module__ == models.__name__:
        monkeypatch.setattr(featurizer_class, "__module__", "synthloop.models")
    joblib.dump(model, path)
    monkeypatch.undo()
    assert b"synthloop.models" in path.read_bytes() and b"synthloop.learn.models" not in path.read_bytes()
    sys.modules.pop("synthloop.models", None)  # a fresh process: the old path is not importable by itself

    loaded = load_model(path)
    assert type(loaded) is TextClassifier
    assert list(loaded.predict(["free prize cash", "lunch at noon"])) == list(model.predict(["free prize cash", "lunch at noon"]))


def test_old_type_names_stay_trusted_for_exports():
    names = old_paths.with_old_names(frozenset({"synthloop.learn.models.TextClassifier", "sklearn.x.Y"}))
    assert names == {"synthloop.learn.models.TextClassifier", "synthloop.models.TextClassifier", "sklearn.x.Y"}


def test_model_files_are_plain_pickles_and_old_joblib_files_still_load(tmp_path):
    model = small_model()
    new, old = tmp_path / "models" / "v0001.joblib", tmp_path / "models" / "v0002.joblib"
    save_model(model, new)
    # The C unpickler reads it: the first line, then a protocol-5 pickle.
    assert new.read_bytes().startswith(MAGIC) and new.read_bytes()[len(MAGIC)] == 0x80
    joblib.dump(model, old)  # as versions before 2026-12-02 wrote them (featurizer inside)
    probe = ["free prize cash", "lunch at noon"]
    for path in (new, old):
        assert load_model(path).predict_proba(probe).tolist() == model.predict_proba(probe).tolist()
