"""hybrid-lr, zero-shot round 0, the cold-start strategy and the embedding feature store."""

import numpy as np
import pandas as pd
import pytest

from synthloop import Project, SynthloopError
from synthloop.learn.features import EmbeddingStore
from synthloop.learn.model_files import load_model, save_model
from synthloop.learn.models import TextClassifier, label_prompts
from synthloop.task import load_task


@pytest.fixture(scope="module")
def embedding_packages():
    from synthloop.learn.embed import EmbeddingBackendError, use_file

    try:
        use_file()
    except EmbeddingBackendError as err:
        from helpers import skip_or_fail

        skip_or_fail(f"the USE embedding model hybrid-lr uses is not installed (make install adds it): {err}")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    """One feature store for the module's models: each text is embedded once for all of them."""
    return str(tmp_path_factory.mktemp("state") / "features")


@pytest.fixture(scope="module")
def sms():
    from helpers import EXAMPLE

    pool = pd.read_csv(EXAMPLE / "pool.csv").head(300)
    test = pd.read_csv(EXAMPLE / "test.csv").head(200)
    return load_task(EXAMPLE / "task.toml"), pool, test


def test_store_computes_each_text_once_and_persists(tmp_path):
    calls = []

    def compute(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    store = EmbeddingStore(tmp_path, "toy")
    first = store.get_or_compute(["a", "bb", "a"], compute)
    assert calls == [["a", "bb"]]  # the repeated text is computed once
    np.testing.assert_array_equal(first, [[1, 1], [2, 1], [1, 1]])
    store.close()
    again = EmbeddingStore(tmp_path, "toy")  # another process reads what this one wrote
    np.testing.assert_array_equal(again.get_or_compute(["bb", "ccc"], compute), [[2, 1], [3, 1]])
    assert calls[-1] == ["ccc"] and len(again) == 3
    with pytest.raises(SynthloopError, match="dimensional"):
        again.put([b"k" * 20], np.zeros((1, 3)))
    again.close()


def test_store_files_are_per_model(tmp_path):
    a = EmbeddingStore(tmp_path, "model/a")
    b = EmbeddingStore(tmp_path, "model-b")
    assert a.path != b.path and a.path.parent == tmp_path
    a.close()
    b.close()


def test_hybrid_learns_saves_and_reads_embeddings_from_the_store(sms, tmp_path, embedding_packages):
    spec, pool, test = sms
    store = tmp_path / "state" / "features"
    (tmp_path / "state").mkdir()
    model = TextClassifier(labels=spec.label_names, name="hybrid-lr", calibrate=False, feature_dir=str(store),
                           prompts=label_prompts(spec)).fit(list(pool.text), list(pool.label))
    proba = model.predict_proba(list(test.text))
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert np.mean(model.classes_[proba.argmax(axis=1)] == test.label.to_numpy()) > 0.93
    stored = EmbeddingStore(store, "use-multilingual-256-normalized")
    n = len(stored)
    assert n >= len(set(pool.text)) + len(set(test.text))  # pool, test and the label prompts
    save_model(model, tmp_path / "m.joblib")
    again = load_model(tmp_path / "m.joblib")
    np.testing.assert_allclose(again.predict_proba(list(test.text)), proba, atol=1e-6)
    assert len(stored) == n  # nothing was embedded twice
    stored.close()


def test_zero_shot_with_no_labels_is_above_chance(sms, embedding_packages, store_dir):
    spec, pool, test = sms
    model = TextClassifier(labels=spec.label_names, name="hybrid-lr", prompts=label_prompts(spec), feature_dir=store_dir)
    model.fit(list(pool.text[:50]), [])  # no training rows at all: the featurizer is fitted on pool texts
    assert model.clf_ is None
    pred = model.predict(list(test.text))
    from sklearn.metrics import f1_score

    # Chance is 0.5 macro-F1 for a coin flip; a model that always says "ham" gets about 0.46.
    assert f1_score(test.label, pred, average="macro") > 0.6


def test_task_examples_alone_still_give_zero_shot_then_labels_train(sms, embedding_packages, store_dir):
    spec, pool, _ = sms
    examples = spec.examples()
    model = TextClassifier(labels=spec.label_names, name="hybrid-lr", prompts=label_prompts(spec), feature_dir=store_dir)
    model.fit([t for t, _ in examples], [lab for _, lab in examples], sample_weight=[0.5] * len(examples))
    assert model.clf_ is None  # task examples are not real labels
    texts = list(pool.text[:40]) + [t for t, _ in examples]
    labels = list(pool.label[:40]) + [lab for _, lab in examples]
    if len(set(pool.label[:40])) < 2:
        pytest.skip("the first 40 pool rows hold one class")
    model.fit(texts, labels, sample_weight=[1.0] * 40 + [0.5] * len(examples))
    assert model.clf_ is not None and sum(model.real_counts_.values()) == 40


def test_tfidf_without_labels_is_refused_as_before():
    with pytest.raises(SynthloopError, match="at least two classes"):
        TextClassifier(labels=["a", "b"], name="tfidf-lr", prompts={"a": ["a"], "b": ["b"]}).fit(
            ["one text", "another text"], ["a", "a"])


def test_cold_start_spreads_picks_then_hands_over_to_diverse_margin(sms, embedding_packages, store_dir):
    from synthloop.learn import active
    from synthloop.learn.coldstart import cold_start, diverse_margin

    spec, pool, _ = sms
    texts = list(pool.text)
    model = TextClassifier(labels=spec.label_names, name="hybrid-lr", prompts=label_prompts(spec), feature_dir=store_dir)
    model.fit(texts, [], featurizer=None)
    X = model.transform(texts)
    view = active.FittedView(model)
    picked, scores = cold_start(view, X, 10)
    assert len(set(picked.tolist())) == 10 and scores.shape == (10,)
    # One pick per k-means cluster, the most central one: typical texts, not the outliers margin finds.
    from synthloop.learn.coldstart import kmeans

    emb = model.featurizer_.embedding_block(X)
    clusters, _ = kmeans(emb, 10, 0)
    assert len(set(clusters[picked].tolist())) == 10
    margin_picks, _ = active.select("margin", model, X, 10)

    def typicality(idx):  # mean cosine similarity to the whole pool
        return float((emb[idx] @ emb.T).mean())

    assert typicality(picked) > typicality(margin_picks)
    ham, spam = np.flatnonzero(pool.label == "ham")[:2], np.flatnonzero(pool.label == "spam")[:2]
    rows = np.r_[ham, spam]
    model.fit([texts[i] for i in rows], list(pool.label.iloc[rows]))  # 2 real labels per class: phase over
    X = model.transform(texts)  # the refit made a new featurizer: the pool's rows under it
    again, _ = cold_start(active.FittedView(model), X, 10)
    # Phase over: diverse margin, the most uncertain text of each of 10 clusters among the most uncertain,
    # which are (4 real labels, batches of 10) the pool * 10 / 14 most uncertain, as that is more than 10 * 10.
    m = len(texts) * 10 // 14
    top = active.select("margin", model, X, m)[0]
    assert set(again.tolist()) <= set(top.tolist()) and len(set(again.tolist())) == 10
    emb = model.featurizer_.embedding_block(X)
    clusters, _ = kmeans(emb[top], 10, 0)
    position = {int(i): p for p, i in enumerate(top)}
    assert len({int(clusters[position[int(i)]]) for i in again}) == 10
    assert top[0] in again  # the most uncertain text of all leads its cluster
    # Without widening, the candidates are the 10 * 10 most uncertain.
    narrow, _ = diverse_margin(active.FittedView(model), X, 10, widen=False)
    assert set(narrow.tolist()) <= set(active.select("margin", model, X, 100)[0].tolist())


def test_cold_start_phase_is_bounded_in_batches():
    """77 classes at 2 labels each would be 154 labels of central picks: the phase also ends after 2 batches."""
    from types import SimpleNamespace

    from synthloop.learn.coldstart import phase_done

    counts = {f"c{i}": (1 if i < 20 else 0) for i in range(77)}
    assert not phase_done(SimpleNamespace(real_counts_=counts), n=25)  # 20 labels < 2 batches of 25
    counts.update({f"c{i}": 1 for i in range(50)})
    assert phase_done(SimpleNamespace(real_counts_=counts), n=25)  # 50 labels: 2 batches
    assert not phase_done(SimpleNamespace(real_counts_=counts), n=25, batches=None)  # unbounded: needs 2 each
    assert phase_done(SimpleNamespace(real_counts_={"a": 2, "b": 3}), n=25)  # 2 per class: done at once


def test_project_round_zero_without_examples_is_zero_shot(tmp_path, small_pool, embedding_packages):
    """A task with no examples and no labels: round 0 classifies from the label names and descriptions,
    and a second process's round reads every embedding from the project's feature store."""
    import tomllib

    import tomli_w

    data = tomllib.loads((small_pool / "task.toml").read_text())
    for label in data["task"]["labels"]:
        label["examples"] = []
    (small_pool / "task.toml").write_text(tomli_w.dumps(data))
    proj = Project.init(tmp_path / "p", small_pool / "task.toml", model={"name": "hybrid-lr"}, loop={"batch_size": 10})
    proj.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    proj.import_file(small_pool / "test.csv", label_col="label", split="test")
    first = proj.round()
    assert first.n_labels == 0 and first.metrics["accuracy"] > 0.5 and first.queried == 10
    proj.close()
    stored = EmbeddingStore(tmp_path / "p" / ".synthloop" / "features", "use-multilingual-256-normalized")
    n = len(stored)
    assert n >= 500 - 10  # pool and test (a few texts repeat)
    again = Project(tmp_path / "p")
    second = again.round()
    assert second.n_labels == 10 and second.metrics["accuracy"] > 0.5
    assert len(stored) == n  # the second round embedded nothing new
    again.close()
    stored.close()


def test_a_copied_project_embeds_into_its_own_store_even_after_the_original_is_gone(tmp_path, small_pool, embedding_packages):
    """Model files name the embedding store relative to their project: a copy never writes into (or needs) the
    folder the model was trained in."""
    import shutil

    texts = ["WIN a free cruise, text GO now", "see you at lunch?"]
    proj = Project.init(tmp_path / "orig", small_pool / "task.toml", model={"name": "hybrid-lr"}, loop={"batch_size": 10})
    proj.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    proj.import_file(small_pool / "test.csv", label_col="label", split="test")
    proj.round()
    expected = proj.predict(texts)
    proj.close()
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    kind = "use-multilingual-256-normalized"
    original = EmbeddingStore(tmp_path / "orig" / ".synthloop" / "features", kind)
    n_original = len(original)
    original.close()

    copy = Project(tmp_path / "copy")
    try:
        _, model = copy.load_model()
        own = str(tmp_path / "copy" / ".synthloop" / "features")
        assert model.feature_dir == own and model.featurizer_.store == own
        [new] = copy.predict(["a text neither project has seen"])
        original = EmbeddingStore(tmp_path / "orig" / ".synthloop" / "features", kind)
        assert len(original) == n_original  # the original's store is untouched
        original.close()
        shutil.rmtree(tmp_path / "orig")
        rows = copy.predict(texts)
        assert [r["label"] for r in rows] == [r["label"] for r in expected]
        for row, before in zip(rows, expected):
            assert row["probabilities"] == pytest.approx(before["probabilities"], abs=1e-6)
        stored = EmbeddingStore(own, kind)
        n = len(stored)
        copy.predict(["one more text, embedded into the copy's store"])
        assert len(stored) == n + 1 and not (tmp_path / "orig").exists()
        stored.close()
    finally:
        copy.close()
