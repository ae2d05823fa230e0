import numpy as np
import pandas as pd
import pytest

from synthloop import SynthloopError
from synthloop.learn.model_files import load_model, save_model
from synthloop.learn.models import TextClassifier


@pytest.fixture(scope="module")
def sms(request):
    from helpers import EXAMPLE

    pool = pd.read_csv(EXAMPLE / "pool.csv").head(400)
    test = pd.read_csv(EXAMPLE / "test.csv").head(200)
    return list(pool.text), list(pool.label), list(test.text), list(test.label)


@pytest.mark.parametrize("name", ["tfidf-lr", "hashing-lr", "embed-lr"])
def test_models_learn_and_give_calibrated_probabilities(name, sms, tmp_path):
    if name == "embed-lr":
        pytest.importorskip("onnxruntime", reason="embed-lr needs the embedding extra (make test installs it)")
    texts, labels, test_texts, test_labels = sms
    model = TextClassifier(labels=["ham", "spam"], name=name).fit(texts, labels)
    proba = model.predict_proba(test_texts)
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    accuracy = np.mean(model.predict(test_texts) == np.array(test_labels))
    assert accuracy > 0.9, f"{name} accuracy {accuracy}"
    save_model(model, tmp_path / "m.joblib")
    again = load_model(tmp_path / "m.joblib")
    np.testing.assert_allclose(again.predict_proba(test_texts), proba)


def test_unseen_task_labels_get_zero_probability():
    model = TextClassifier(labels=["a", "b", "c"]).fit(["x one", "x two", "y one", "y two"], ["a", "a", "b", "b"])
    proba = model.predict_proba(["x three"])
    assert proba.shape == (1, 3) and proba[0, 2] == 0.0


def test_one_class_is_refused():
    with pytest.raises(SynthloopError, match="at least two classes"):
        TextClassifier(labels=["a", "b"]).fit(["x", "y"], ["a", "a"])


def test_unknown_model_name():
    with pytest.raises(SynthloopError, match="unknown model 'bert'"):
        TextClassifier(name="bert").fit(["x", "y"], ["a", "b"])


def test_missing_model_file(tmp_path):
    with pytest.raises(SynthloopError, match="synthloop train"):
        load_model(tmp_path / "v9.joblib")
