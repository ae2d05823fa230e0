"""hybrid-lr, the default model, served: a real `synthloop serve` process and a real HTTP client, and the direct
route it serves by."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import EXAMPLE, skip_or_fail
from test_serve import TEXTS, Server, project_proba

from synthloop import Project


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory) -> Path:
    """A hybrid-lr project (the Universal Sentence Encoder and TF-IDF) trained on 300 labeled SMS."""
    from synthloop.learn.embed import EmbeddingBackendError, use_file

    try:
        use_file()
    except EmbeddingBackendError as e:
        skip_or_fail(f"the Universal Sentence Encoder is not installed (make install adds it): {e}")
    root = tmp_path_factory.mktemp("hybrid")
    pd.read_csv(EXAMPLE / "pool.csv").head(300).to_csv(root / "pool.csv", index=False)
    proj = Project.init(root / "proj", EXAMPLE / "task.toml", model={"name": "hybrid-lr"})
    proj.import_file(root / "pool.csv", label_col="label")
    proj.train()
    proj.close()
    return root / "proj"


def probabilities(rows: list[dict]) -> np.ndarray:
    return np.array([[row["probabilities"]["ham"], row["probabilities"]["spam"]] for row in rows])


def test_hybrid_lr_is_served_with_its_own_probabilities_one_text_a_batch_and_a_big_batch(hybrid, tmp_path):
    texts = [*TEXTS, "", "a text this model never saw: brand new", "ok " * 300]
    expected = project_proba(hybrid, 1, texts)
    server = Server(tmp_path / "serve.log", "--project", hybrid)
    try:
        single = [server.client.post("/v1/predict", json={"text": t}) for t in texts]
        assert all(r.status_code == 200 for r in single), [r.text for r in single]
        batch = server.client.post("/v1/predict", json={"texts": texts}).json()
        big = server.client.post("/v1/predict", json={"texts": texts * 2}).json()  # over 8 texts: off the event loop
    finally:
        server.stop()
    np.testing.assert_allclose(probabilities([r.json() for r in single]), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(probabilities(batch["predictions"]), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(probabilities(big["predictions"]), np.vstack([expected, expected]), rtol=0, atol=1e-9)
    assert [r.json()["label"] for r in single] == ["ham" if p[0] > p[1] else "spam" for p in expected]
    assert {r.json()["model_version"] for r in single} == {batch["model_version"]} == {1}


def test_the_direct_route_gives_the_models_own_probabilities_for_a_batch_and_for_one_text(hybrid):
    from synthloop.serve.fastpath import fast_predict_proba

    proj = Project(hybrid)
    try:
        _, model = proj.load_model()
    finally:
        proj.close()
    direct = fast_predict_proba(model)
    assert direct is not None
    probe = [*TEXTS, "", "ok " * 300]
    got = direct(probe)
    np.testing.assert_allclose(got, model.predict_proba(probe), rtol=0, atol=1e-9)
    for k, text in enumerate(probe):  # one text alone (the server's usual request): the same numbers
        np.testing.assert_allclose(direct([text]), got[k:k + 1], rtol=0, atol=1e-9)
