import numpy as np
import pandas as pd
import pytest

from synthloop.learn.models import TextClassifier
from synthloop.learn.selftrain import pseudo_labels, self_train


@pytest.fixture(scope="module")
def sms():
    from helpers import EXAMPLE

    pool = pd.read_csv(EXAMPLE / "pool.csv").head(600)
    return list(pool.text), np.asarray(pool.label, dtype=object)


def fitted(texts, labels, n=40):
    # Balanced start: the first n/2 of each class are the "real" labels, the rest of the texts are the pool.
    labeled = np.r_[np.flatnonzero(labels == "ham")[: n // 2], np.flatnonzero(labels == "spam")[: n // 2]]
    model = TextClassifier(labels=["ham", "spam"], name="tfidf-lr", calibrate=False)
    featurizer = model.fit_featurizer(texts)
    X = featurizer.transform(texts)
    model.fit(None, labels[labeled], featurizer=featurizer, X=X[labeled])
    pool = np.setdiff1d(np.arange(len(texts)), labeled)
    return model, X, labeled, pool


def test_pseudo_labels_are_balanced_confident_and_surest_first(sms):
    texts, labels = sms
    model, X, _, pool = fitted(texts, labels)
    proba = model.predict_proba_features(X[pool])
    rows, predicted = pseudo_labels(model, X[pool], per_class=5)
    assert len(rows) == len(predicted) == 10
    for label in ("ham", "spam"):
        mine = rows[predicted == label]
        k = list(model.classes_).index(label)
        assert len(mine) == 5 and (proba[mine].argmax(axis=1) == k).all()
        # the surest of that class, surest first
        rest = np.setdiff1d(np.flatnonzero(proba.argmax(axis=1) == k), mine)
        assert list(proba[mine, k]) == sorted(proba[mine, k], reverse=True) and proba[rest, k].max() <= proba[mine, k].min()
    # A floor keeps only the rows at or above it.
    floor = float(np.median(proba.max(axis=1)))
    rows, _ = pseudo_labels(model, X[pool], per_class=len(pool), threshold=floor)
    assert 0 < len(rows) < len(pool) and (proba[rows].max(axis=1) >= floor).all()
    assert len(pseudo_labels(model, X[pool], per_class=5, threshold=1.01)[0]) == 0
    assert len(pseudo_labels(model, X[pool], per_class=0)[0]) == 0


def test_self_train_adds_weak_labels_that_never_count_as_real(sms):
    texts, labels = sms
    model, X, labeled, pool = fitted(texts, labels)
    refit = self_train(model, X[labeled], labels[labeled], None, X[pool], weight=0.3, threshold=0.5)
    assert refit is not model
    # per class at most the real labels of the average class (20): 40 weak labels at most, and some were added.
    assert 0 < refit.weak_labels_ <= 40
    assert refit.real_counts_ == model.real_counts_ == {"ham": 20, "spam": 20}
    accuracy = np.mean(refit.predict_proba_features(X[pool]).argmax(axis=1) == (labels[pool] == "spam"))
    assert accuracy > 0.8
    # Off, or nothing confident enough: the model itself comes back.
    assert self_train(model, X[labeled], labels[labeled], None, X[pool], weight=0.0) is model
    assert self_train(model, X[labeled], labels[labeled], None, X[pool], weight=0.3, threshold=1.01) is model


def test_a_project_with_self_train_weight_trains_on_weak_labels(tmp_path, small_pool):
    from helpers import EXAMPLE

    from synthloop import Project

    proj = Project.init(tmp_path / "proj", EXAMPLE / "task.toml", loop={"batch_size": 20, "strategy": "random"},
                        model={"name": "tfidf-lr", "calibrate": False, "self_train_weight": 0.3})
    try:
        proj.import_file(small_pool / "pool.csv", label_col="label", gold=True)
        proj.round()
        second = proj.round()
        _, model = proj.load_model(second.model_version)
        # 20 real labels; the weak ones (at most 10 per class) are in the fit but not in the real counts.
        assert sum(model.real_counts_.values()) == 20
        assert 0 < model.weak_labels_ <= 20
    finally:
        proj.close()
