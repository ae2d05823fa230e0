import pickle

import numpy as np
import pytest
from sklearn.base import clone

pytest.importorskip("onnxruntime", reason="embed-lr needs onnxruntime (make test installs the embedding packages)")

from synthloop import SynthloopError  # noqa: E402
from synthloop.embed import SentenceEmbedder, packaged_files  # noqa: E402


@pytest.fixture(scope="module")
def embedder():
    try:
        packaged_files()
    except SynthloopError as err:
        pytest.skip(str(err))
    return SentenceEmbedder()


def cos(a, b):
    return float(a @ b)


def test_shape_norm_and_meaning(embedder):
    vecs = embedder.transform(["A man is playing guitar.", "Someone plays a guitar.", "The stock market fell today.", ""])
    assert vecs.shape == (4, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs[:3], axis=1), 1.0, atol=1e-5)
    assert cos(vecs[0], vecs[1]) > 0.6 > cos(vecs[0], vecs[2])


def test_batches_do_not_change_vectors(embedder):
    texts = [f"message number {i} about {'cats' if i % 2 else 'stocks'}" for i in range(10)]
    np.testing.assert_allclose(SentenceEmbedder(batch_size=3).transform(texts), embedder.transform(texts), atol=1e-5)


def test_pickle_and_clone(embedder):
    text = ["free prize, call now"]
    before = embedder.transform(text)
    again = pickle.loads(pickle.dumps(embedder))
    np.testing.assert_allclose(again.transform(text), before)
    assert clone(embedder).get_params() == embedder.get_params()


def test_other_models_need_sentence_transformers(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentence_transformers" else real(name, *a))
    with pytest.raises(SynthloopError, match=r"synthloop\[st\]"):
        SentenceEmbedder(model="intfloat/e5-small").transform(["x"])
