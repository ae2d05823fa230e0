"""Streaming pool scoring (synthloop.scale): exact top-k against brute force, flat memory, and Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from modAL.uncertainty import classifier_entropy, classifier_margin, classifier_uncertainty

from synthloop import SynthloopError
from synthloop.active import FittedView, select
from synthloop.data import example_id
from synthloop.models import TextClassifier
from synthloop.scale import ranked_batch_candidates, score_pool

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sms_spam"
MEASURES = {
    "least-confident": classifier_uncertainty,
    "margin": lambda view, X: -classifier_margin(view, X),
    "entropy": classifier_entropy,
}


def make_pool(n: int, seed: int = 0) -> list[str]:
    """n distinct texts: committed SMS messages with two random words appended."""
    messages = pd.read_csv(EXAMPLE / "pool.csv").text.tolist()
    words = " ".join(messages).split()
    rng = np.random.default_rng(seed)
    texts: dict[str, None] = {}
    while len(texts) < n:
        rows, extra = rng.integers(0, len(messages), n).tolist(), rng.integers(0, len(words), (n, 2)).tolist()
        texts.update((f"{messages[r]} {words[a]} {words[b]}".strip(), None) for r, (a, b) in zip(rows, extra))
    return list(texts)[:n]


@pytest.fixture(scope="module")
def model() -> TextClassifier:
    frame = pd.read_csv(EXAMPLE / "pool.csv").head(400)
    # Uncalibrated: a third of the fit time, and streaming does not care how the probabilities are made.
    return TextClassifier(labels=["ham", "spam"], name="hashing-lr", calibrate=False).fit(frame.text, frame.label)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("pool")
    texts = make_pool(20_000)
    frame = pd.DataFrame({"text": texts, "uid": np.arange(len(texts)) * 7})
    frame.to_parquet(folder / "pool.parquet", row_group_size=6000)
    frame.to_csv(folder / "pool.csv", index=False)
    (folder / "parts").mkdir()
    for part in range(4):  # several files: Ray lists and reads them in parallel, a path one file never takes
        frame.iloc[part::4].to_parquet(folder / "parts" / f"part-{part}.parquet")
    return {"texts": texts, "parquet": folder / "pool.parquet", "csv": folder / "pool.csv", "folder": folder,
            "parts": folder / "parts"}


def brute_force(model, texts, ids, strategy: str, k: int) -> list[tuple[str, float]]:
    """Everything in memory: score all rows, sort by (score desc, id asc)."""
    scores = MEASURES[strategy](FittedView(model), model.transform(texts))
    ids = np.asarray(ids, dtype=str)
    order = np.lexsort((ids, -scores))[:k]
    return [(ids[i], float(scores[i])) for i in order]


def assert_same(result, expected):
    assert [i for i, _ in result] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in result], [s for _, s in expected], atol=1e-9)


@pytest.mark.parametrize("strategy", sorted(MEASURES))
def test_local_engine_equals_brute_force_on_parquet(model, pool, strategy):
    expected = brute_force(model, pool["texts"], [example_id(t) for t in pool["texts"]], strategy, 50)
    assert_same(score_pool(model, pool["parquet"], strategy=strategy, k=50, chunk_size=4000, n_jobs=1), expected)


def test_local_engine_equals_brute_force_on_csv_with_id_column_and_workers(model, pool):
    ids = [str(7 * i) for i in range(len(pool["texts"]))]
    expected = brute_force(model, pool["texts"], ids, "margin", 40)
    assert_same(score_pool(model, pool["csv"], k=40, chunk_size=3000, n_jobs=2, id_col="uid"), expected)


def test_chunk_size_and_source_kind_do_not_change_the_result(model, pool):
    first = score_pool(model, pool["parquet"], k=30, chunk_size=20_000, n_jobs=1)
    for chunk_size in (997, 5000):
        assert score_pool(model, pool["parquet"], k=30, chunk_size=chunk_size, n_jobs=1) == first
    assert score_pool(model, pool["csv"], k=30, chunk_size=6000, n_jobs=1) == first
    assert score_pool(model, str(pool["folder"] / "*.parquet"), k=30, n_jobs=1) == first
    texts = pool["texts"]
    chunks = ((None, texts[i:i + 2500]) for i in range(0, len(texts), 2500))
    assert score_pool(model, chunks, k=30, n_jobs=1) == first


def test_exclude_ids_are_never_selected(model, pool):
    before = score_pool(model, pool["parquet"], k=20, n_jobs=1)
    excluded = {before[0][0], before[3][0], before[7][0]}
    after = score_pool(model, pool["parquet"], k=17, n_jobs=1, exclude_ids=excluded)
    assert not excluded & {i for i, _ in after}
    assert after == [row for row in before if row[0] not in excluded]


def test_repeated_texts_are_selected_once(model, pool, tmp_path):
    texts = pool["texts"][:3000]
    pd.DataFrame({"text": texts + texts[:1500] + ["", "   "]}).to_parquet(tmp_path / "dup.parquet")
    result = score_pool(model, tmp_path / "dup.parquet", k=100, chunk_size=1000, n_jobs=1)
    assert len({i for i, _ in result}) == 100
    assert_same(result, brute_force(model, texts, [example_id(t) for t in texts], "margin", 100))


def test_ranked_batch_returns_k_distinct_ids_from_the_most_uncertain(model, pool):
    k = 25
    labeled = make_pool(200, seed=1)
    result = score_pool(model, pool["parquet"], strategy="ranked-batch", k=k, chunk_size=4000, n_jobs=1,
                        training_texts=labeled)
    ids = [i for i, _ in result]
    assert len(ids) == k == len(set(ids))
    candidates = brute_force(model, pool["texts"], [example_id(t) for t in pool["texts"]], "least-confident",
                             ranked_batch_candidates(k))
    assert set(ids) <= {i for i, _ in candidates}
    # Cold start (no labeled set) works too.
    assert len(score_pool(model, pool["parquet"], strategy="ranked-batch", k=5, n_jobs=1)) == 5


MEASURE_RSS = """
import resource, sys, joblib
from synthloop.scale import score_pool
model = joblib.load(sys.argv[1])
for path in sys.argv[2:]:
    score_pool(model, path, k=100, chunk_size=10_000, n_jobs=1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024))
"""


def test_memory_stays_flat_in_pool_size(model, pool, tmp_path):
    texts = make_pool(200_000, seed=2)
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "big.parquet", row_group_size=20_000)
    whole_texts = sum(sys.getsizeof(t) for t in texts) + sys.getsizeof(texts)
    del texts
    joblib.dump(model, tmp_path / "model.joblib")
    # A fresh process, so its peak RSS is this scoring alone: the 20k pool twice (imports and allocator
    # warm-up land there), then the 200k pool. Peak RSS cannot be reset, only watched grow.
    out = subprocess.run([sys.executable, "-c", MEASURE_RSS, str(tmp_path / "model.joblib"), str(pool["parquet"]),
                          str(pool["parquet"]), str(tmp_path / "big.parquet")],
                         capture_output=True, text=True, check=True).stdout.split()
    small, big = int(out[1]), int(out[2])
    # 10x the rows, the same peak give or take allocator noise; holding the 200k texts alone would add
    # whole_texts (about 30 MB), their feature matrix about 75 MB more.
    assert big - small < min(15_000_000, whole_texts / 2), (small, big, whole_texts)


def test_store_chunks_and_the_pool_file_give_the_store_ids_and_the_in_memory_choice(project):
    project.import_file(EXAMPLE / "pool.csv", label_col="label", gold=True)
    _, model = project.train()  # the project's default model (tfidf-lr): any model name streams
    ids, texts = project.store.unlabeled_pool()
    from_store = score_pool(model, project.store.unlabeled_pool_chunks(300), k=10, n_jobs=1)
    assert score_pool(model, EXAMPLE / "pool.csv", k=10, n_jobs=1) == from_store
    picked, _ = select("margin", model, model.transform(texts), 10)
    assert {i for i, _ in from_store} == {ids[i] for i in picked}


def test_bad_input_is_refused_with_the_fix(model, pool, tmp_path):
    with pytest.raises(SynthloopError, match="text_col"):
        score_pool(model, pool["parquet"], text_col="message", n_jobs=1)
    with pytest.raises(SynthloopError, match="cannot be streamed"):
        score_pool(model, pool["parquet"], strategy="random")
    with pytest.raises(SynthloopError, match="no pool files"):
        score_pool(model, str(tmp_path / "*.parquet"))
    with pytest.raises(SynthloopError, match="engine='ray'"):
        score_pool(model, "s3://bucket/pool/part-0.parquet")
    (tmp_path / "pool.jsonl").write_text('{"text": "hi"}\n')
    with pytest.raises(SynthloopError, match="Parquet"):
        score_pool(model, tmp_path / "pool.jsonl")


# Ray: a real two-node cluster, each node its own process tree -----------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its DataContext defaults
def test_ray_engine_on_a_two_node_cluster_selects_the_local_engine_ids(model, pool, ray_cluster):
    local = score_pool(model, pool["parquet"], k=50, chunk_size=4000, n_jobs=1)
    on_ray = score_pool(model, pool["parts"], k=50, chunk_size=4000, engine="ray", address=ray_cluster)
    assert [i for i, _ in on_ray] == [i for i, _ in local]
    np.testing.assert_allclose([s for _, s in on_ray], [s for _, s in local], atol=1e-12)
    # Chunks handed over by the caller (the project's store) go out as Ray tasks.
    texts = pool["texts"]
    chunks = ((None, texts[i:i + 5000]) for i in range(0, len(texts), 5000))
    assert score_pool(model, chunks, k=50, engine="ray", address=ray_cluster) == on_ray
