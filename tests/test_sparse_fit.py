"""Fitting on the columns the labeled rows use gives the model a full-width fit gives (synthloop.learn.sparse_fit)."""

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from synthloop.learn.models import TextClassifier, make_featurizer
from synthloop.learn.sparse_fit import fit_used_columns

WORDS = "cash prize win call now meeting lunch tomorrow office report free offer claim see you later".split()


def _data(n=240, seed=0):
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for i in range(n):
        label = i % 3
        words = rng.choice(WORDS[label * 5:(label + 1) * 5], 4).tolist() + rng.choice(WORDS, 3).tolist()
        texts.append(" ".join(words) + f" w{rng.integers(0, 400)}")
        y.append(["spam", "ham", "other"][label])
    return texts, np.array(y, dtype=object)


def test_same_probabilities_as_the_full_width_fit_plain_and_calibrated():
    texts, y = _data()
    # hashing-lr's featurizer, narrower: the full-width fits being compared against are the slow part.
    featurizer = make_featurizer("hashing-lr").set_params(n_features=2**15)
    X, X_new = featurizer.transform(texts[:180]), featurizer.transform(texts[180:] + ["never seen words at all"])
    weights = np.where(np.arange(180) % 4 == 0, 0.5, 1.0)
    base = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced")
    calibrated = CalibratedClassifierCV(base, method="sigmoid", cv=StratifiedKFold(3, shuffle=True, random_state=0))
    for estimator in (base, calibrated):
        full = clone(estimator).fit(X, y[:180], sample_weight=weights)
        narrow = fit_used_columns(clone(estimator), X, y[:180], weights)
        assert narrow.n_features_in_ == X.shape[1] == 2**15
        assert np.abs(full.predict_proba(X_new) - narrow.predict_proba(X_new)).max() < 1e-6
        assert list(narrow.classes_) == list(full.classes_)


def test_dense_rows_fit_as_they_are():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(60, 5)), np.array([0, 1] * 30)
    model = fit_used_columns(LogisticRegression(), X, y)
    assert model.coef_.shape == (1, 5) and not sp.issparse(model.coef_)


def test_text_classifier_trains_on_used_columns_and_scores_any_text():
    texts, y = _data()
    model = TextClassifier(labels=["spam", "ham", "other"], name="hashing-lr", calibrate=False).fit(texts, y)
    assert model.clf_.coef_.shape == (3, 2**20)
    proba = model.predict_proba(["cash prize win", "a text with words no label used"])
    assert proba.shape == (2, 3) and np.allclose(proba.sum(axis=1), 1)
    assert model.predict(["cash prize win call now"])[0] == "spam"


def test_a_model_saved_with_a_column_slice_loads_and_scores_the_same(tmp_path):
    """Models saved before 2026-12-01 kept coefficients for the used columns only, plus `used_columns_`; loading
    one widens it to the full width, the way fits are stored now."""
    from synthloop.learn.model_files import load_model, save_model
    from synthloop.learn.sparse_fit import linear_parts

    texts, y = _data()
    for calibrate in (False, True):
        model = TextClassifier(labels=["spam", "ham", "other"], name="hashing-lr", calibrate=calibrate).fit(texts, y)
        expected = model.predict_proba(["cash prize win", "a text with words no label used"])
        used = np.unique(sp.csr_matrix(model.transform(texts)).indices)
        for part in linear_parts(model.clf_):  # as the old fit left it
            part.coef_, part.n_features_in_ = part.coef_[:, used], len(used)
        model.clf_.n_features_in_, model.used_columns_ = len(used), used
        save_model(model, tmp_path / f"old-{calibrate}.joblib")
        loaded = load_model(tmp_path / f"old-{calibrate}.joblib")
        assert not hasattr(loaded, "used_columns_") and loaded.clf_.n_features_in_ == 2**20
        np.testing.assert_allclose(loaded.predict_proba(["cash prize win", "a text with words no label used"]), expected,
                                   rtol=0, atol=1e-12)
