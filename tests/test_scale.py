"""Streaming pool scoring (synthloop.learn.scale): exact top-k against brute force, flat memory, and Ray."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from helpers import skip_or_fail
from modAL.uncertainty import classifier_entropy, classifier_margin, classifier_uncertainty

from synthloop import SynthloopError
from synthloop.data import example_id
from synthloop.learn.active import FittedView, select
from synthloop.learn.models import TextClassifier
from synthloop.learn.scale import ranked_batch_candidates, score_pool

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sms_spam"
# modAL's measures on the registry's scale (higher = less sure, in [0, 1]); the model has two classes.
MEASURES = {
    "least-confident": classifier_uncertainty,
    "margin": lambda view, X: 1 - classifier_margin(view, X),
    "entropy": lambda view, X: classifier_entropy(view, X) / np.log(2),
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
    (folder / "mixed").mkdir()
    for part in range(4):  # several files: Ray lists and reads them in parallel, a path one file never takes
        frame.iloc[part::4].to_parquet(folder / "parts" / f"part-{part}.parquet")
        # Half Parquet, half CSV: Ray reads each kind with its own reader and unions them.
        if part < 2:
            frame.iloc[part::4].to_parquet(folder / "mixed" / f"part-{part}.parquet")
        else:
            frame.iloc[part::4].to_csv(folder / "mixed" / f"part-{part}.csv", index=False)
    return {"texts": texts, "parquet": folder / "pool.parquet", "csv": folder / "pool.csv", "folder": folder,
            "parts": folder / "parts", "mixed": folder / "mixed"}


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


@pytest.mark.parametrize("inline_rows", [0, 6000, 10**9])
def test_local_engine_equals_brute_force_on_csv_with_id_column_and_workers(model, pool, inline_rows, monkeypatch):
    import synthloop.learn.scale

    # Workers from the first chunk, after two chunks scored in this process, or no workers at all (a small pool).
    monkeypatch.setattr(synthloop.learn.scale, "INLINE_ROWS", inline_rows)
    ids = [str(7 * i) for i in range(len(pool["texts"]))]
    expected = brute_force(model, pool["texts"], ids, "margin", 40)
    assert_same(score_pool(model, pool["csv"], k=40, chunk_size=3000, n_jobs=2, id_col="uid"), expected)


def test_chunk_size_and_source_kind_do_not_change_the_result(model, pool):
    first = score_pool(model, pool["parquet"], k=30, chunk_size=20_000, n_jobs=1)
    for chunk_size in (997, 5000):
        assert score_pool(model, pool["parquet"], k=30, chunk_size=chunk_size, n_jobs=1) == first
    assert score_pool(model, pool["csv"], k=30, chunk_size=6000, n_jobs=1) == first
    assert score_pool(model, str(pool["folder"] / "*.parquet"), k=30, n_jobs=1) == first
    assert score_pool(model, pool["mixed"], k=30, chunk_size=3000, n_jobs=1) == first
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
from synthloop.learn.scale import score_pool
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
    # read_parquet and read_csv, unioned in one dataset.
    assert score_pool(model, pool["mixed"], k=50, chunk_size=4000, engine="ray", address=ray_cluster) == on_ray
    # Chunks handed over by the caller (the project's store) go through Ray Data a window at a time (2 CPUs:
    # 4 chunks a window): here a window of chunks with their ids, then one whose ids come from the texts.
    texts = pool["texts"]
    chunks = (([example_id(t) for t in texts[i:i + 2500]] if i < 10_000 else None, texts[i:i + 2500])
              for i in range(0, len(texts), 2500))
    assert score_pool(model, chunks, k=50, engine="ray", address=ray_cluster) == on_ray


LOCAL_RAY = """
import json, sys, joblib, ray
from synthloop.learn.scale import score_pool
model = joblib.load(sys.argv[1])
picks = score_pool(model, sys.argv[2], k=20, chunk_size=5000, engine="ray", n_jobs=1)
print(json.dumps({"picks": picks, "still_up": ray.is_initialized()}))
"""


def test_ray_engine_without_an_address_starts_ray_here_and_stops_it(model, pool, tmp_path):
    if importlib.util.find_spec("ray") is None:
        skip_or_fail("Ray is not installed: pip install 'synthloop[ray]'")
    # A process of its own: this one attaches to the session's two-node cluster, and a driver that started
    # a Ray of its own cannot attach to another afterwards. No RAY_ADDRESS: nothing tells Ray where to go.
    joblib.dump(model, tmp_path / "model.joblib")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_RAY, str(tmp_path / "model.joblib"), str(pool["parquet"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        try:  # whatever Ray left behind in that process's group, and only there
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert not result["still_up"]  # started for the call, shut down after it
    assert [tuple(p) for p in result["picks"]] == score_pool(model, pool["parquet"], k=20, n_jobs=1)


# Importing a big pool file: streamed in batches, never loaded whole ------------------------------------

def twin_projects(tmp_path):
    from synthloop import Project

    return [Project.init(tmp_path / name, EXAMPLE / "task.toml") for name in ("whole", "streamed")]


def stored(project) -> tuple:
    ids, texts = project.store.unlabeled_pool()
    return (project.store.count_examples(), ids, texts, project.store.gold_for(ids),
            sorted(project.store.training_set()))


def write_pool(path: Path, frame: pd.DataFrame) -> None:
    if path.suffix == ".parquet":
        frame.to_parquet(path, row_group_size=128)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_import_streams_the_file_in_batches_and_stores_what_a_whole_read_stores(tmp_path, monkeypatch, suffix):
    import pyarrow.parquet as pq

    import synthloop.data as data

    texts = make_pool(1000, seed=3)
    # Repeats far apart (other batches), one with another label: the first row of a text wins, as before.
    rows = texts + texts[:40] + [texts[5]]
    labels = ["ham"] * len(texts) + ["spam"] * 41
    path = tmp_path / f"pool{suffix}"
    write_pool(path, pd.DataFrame({"text": rows, "label": labels}))
    whole, streamed = twin_projects(tmp_path)
    monkeypatch.setattr(data, "IMPORT_BATCH_ROWS", 10**9)
    reference = whole.import_file(path, label_col="label", first_label_wins=True)

    batches: list[int] = []
    iter_batches = pq.ParquetFile.iter_batches

    def counted(self, *args, **kwargs):
        for batch in iter_batches(self, *args, **kwargs):
            batches.append(batch.num_rows)
            yield batch

    def whole_read(*args, **kwargs):
        raise AssertionError("the whole file was loaded")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counted)
    monkeypatch.setattr(pd, "read_parquet", whole_read)
    read_csv, read_json = pd.read_csv, pd.read_json

    def chunked(reader):
        def read(*args, **kwargs):
            assert kwargs.get("chunksize") == 100, "the whole file was loaded"
            for frame in reader(*args, **kwargs):
                batches.append(len(frame))
                yield frame
        return lambda *args, **kwargs: _Closing(read(*args, **kwargs))

    monkeypatch.setattr(pd, "read_csv", chunked(read_csv))
    monkeypatch.setattr(pd, "read_json", chunked(read_json))
    monkeypatch.setattr(data, "IMPORT_BATCH_ROWS", 100)
    result = streamed.import_file(path, label_col="label", first_label_wins=True)

    # Two passes (check, then store) of 11 batches each, none over 100 rows.
    assert len(batches) == 2 * 11 and max(batches) == 100 and sum(batches) == 2 * len(rows)
    assert result == reference and result.duplicates_in_file == 41 and result.added == 1000
    assert stored(streamed) == stored(whole)
    assert {r[0]: r[2] for r in streamed.store.training_set()}[example_id(texts[5])] == "ham"


class _Closing:
    """A generator that also works as the context manager pandas' chunked readers are."""

    def __init__(self, gen):
        self.gen = gen

    def __iter__(self):
        return self.gen

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.gen.close()


def test_bad_rows_in_a_late_batch_store_nothing(project, tmp_path, monkeypatch):
    import synthloop.data as data

    monkeypatch.setattr(data, "IMPORT_BATCH_ROWS", 50)
    texts = make_pool(400, seed=4)
    before = project.store.count_examples()
    # An empty text in the last batch: the first pass finds it before any batch is stored.
    write_pool(tmp_path / "blank.parquet", pd.DataFrame({"text": texts[:-1] + ["   "]}))
    with pytest.raises(SynthloopError, match=r"1 row\(s\) cannot be imported — row 400: the text is empty"):
        project.import_file(tmp_path / "blank.parquet")
    # One id for two texts, 300 rows apart: told apart by the texts' hashes, not by holding the texts.
    write_pool(tmp_path / "ids.parquet", pd.DataFrame({"text": texts, "key": [*range(399), 7]}))
    with pytest.raises(SynthloopError, match="id '7' is used for two different texts"):
        project.import_file(tmp_path / "ids.parquet", id_col="key")
    assert project.store.count_examples() == before == {}
    # The same id for the same text twice is a repeat, not a clash.
    write_pool(tmp_path / "repeat.parquet", pd.DataFrame({"text": texts + texts[7:8], "key": [*range(400), 7]}))
    assert project.import_file(tmp_path / "repeat.parquet", id_col="key").added == 400


def scan_peak(path: Path) -> int:
    """Peak Python memory of both passes over a file (pyarrow's own buffers, a batch at a time, aside)."""
    import tracemalloc

    from synthloop.data import scan_table

    tracemalloc.start()
    try:
        for _ in scan_table(path).batches():
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_import_memory_is_a_batch_not_the_file(tmp_path, monkeypatch):
    import synthloop.data as data

    texts = make_pool(100_000, seed=5)
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "big.parquet", row_group_size=2000)
    whole_texts = sum(sys.getsizeof(t) for t in texts)
    del texts
    monkeypatch.setattr(data, "IMPORT_BATCH_ROWS", 2000)
    batched = scan_peak(tmp_path / "big.parquet")
    monkeypatch.setattr(data, "IMPORT_BATCH_ROWS", 10**9)  # the whole file as one batch
    whole = scan_peak(tmp_path / "big.parquet")
    # Batched: 2,000 texts plus ~25 bytes a row for the duplicate check (measured: 3.7 MB); whole: every
    # text and its id (30 MB).
    assert batched < whole_texts / 3 < whole, (batched, whole, whole_texts)
