"""Feature rows on disk (synthloop.learn.feature_rows): computed once per featurizer version, read by later rounds
and later processes, extended for new pool rows, and the fitted featurizer reused across CLI processes."""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from synthloop import Project
from synthloop.data import example_id
from synthloop.learn import selection
from synthloop.learn.feature_rows import ROWS_DIR, FeatureRows, featurizer_version
from synthloop.learn.models import TextClassifier, make_featurizer

TEXTS = [f"message {i} about {'prizes' if i % 3 else 'meetings'} number {i * 7 % 11}" for i in range(230)]


def _ids(texts):
    return [example_id(t) for t in texts]


def test_rows_read_back_equal_to_featurizing_and_new_rows_are_added_incrementally(tmp_path):
    featurizer = make_featurizer("hashing-lr")
    rows = FeatureRows(tmp_path, "v1", featurizer, chunk_rows=64)
    first, ids = TEXTS[:150], _ids(TEXTS[:150])
    X = rows.get(ids, first)
    assert rows.featurized == 150 and len(list(rows.dir.glob("chunk-*"))) == 3  # 64 + 64 + 22
    assert abs(X - featurizer.transform(first)).max() == 0

    # Another process (a fresh object) reads them without featurizing, in any order, duplicates included.
    again = FeatureRows(tmp_path, "v1", featurizer, chunk_rows=64)
    order = [149, 3, 77, 3, 0, 128]
    Y = again.get([ids[i] for i in order], [first[i] for i in order])
    assert again.featurized == 0 and sp.issparse(Y)
    assert abs(Y - featurizer.transform([first[i] for i in order])).max() == 0

    # New pool rows: only they are featurized, appended as a new chunk.
    more = TEXTS[140:]
    Z = again.get(_ids(more), more)
    assert again.featurized == len(TEXTS) - 150 and again.size() == len(TEXTS)
    assert abs(Z - featurizer.transform(more)).max() == 0


def test_texts_are_fetched_only_for_rows_not_stored(tmp_path):
    featurizer = make_featurizer("hashing-lr")
    text_of = dict(zip(_ids(TEXTS), TEXTS))
    asked: list[list[str]] = []

    def texts_of(ids):
        asked.append(list(ids))
        return [text_of[i] for i in ids]

    rows = FeatureRows(tmp_path, "v1", featurizer, chunk_rows=64)
    rows.get(_ids(TEXTS[:100]), TEXTS[:100])
    ids = _ids(TEXTS[50:])
    X = rows.get(ids, texts_of)
    assert [sorted(a) for a in asked] == [sorted(_ids(TEXTS[100:]))]  # the 130 new rows' texts, once; none of the 50 stored ones
    assert abs(X - featurizer.transform(TEXTS[50:])).max() == 0
    assert rows.get(ids, texts_of).shape[0] == len(ids) and len(asked) == 1  # all stored now: no text read


class _Dense:
    """A featurizer with dense rows, as embeddings are."""

    def transform(self, texts):
        return np.array([[len(t), t.count("e"), float(hash(t) % 97)] for t in texts])


def test_dense_rows_and_empty_requests(tmp_path):
    rows = FeatureRows(tmp_path, "dense", _Dense())
    X = rows.get(_ids(TEXTS), TEXTS)
    Y = FeatureRows(tmp_path, "dense", _Dense()).get(_ids(TEXTS[::-1]), TEXTS[::-1])
    assert isinstance(Y, np.ndarray) and np.array_equal(Y, X[::-1])
    assert rows.get([], []).shape[0] == 0


def test_version_changes_with_model_settings_and_fit_texts():
    tfidf = TextClassifier(name="tfidf-lr")
    base = featurizer_version(tfidf, TEXTS)
    assert featurizer_version(TextClassifier(name="tfidf-lr", C=1.0, calibrate=False), TEXTS) == base  # classifier only
    assert featurizer_version(tfidf, TEXTS[1:]) != base
    assert featurizer_version(TextClassifier(name="hashing-lr"), TEXTS) != base
    assert featurizer_version(TextClassifier(name="embed-lr", embed_model="other"), []) != \
        featurizer_version(TextClassifier(name="embed-lr"), [])


def _load(project, data):
    project.import_file(data / "pool.csv", label_col="label", gold=True)
    project.import_file(data / "test.csv", label_col="label", split="test")


def test_a_reopened_project_reuses_its_featurizer_and_rows(project, small_pool):
    _load(project, small_pool)
    project.round()
    first = project.store.latest_model()
    featurizers = sorted((project.state_dir / "models").glob("featurizer-*"))
    [version_dir] = (project.state_dir / ROWS_DIR).iterdir()
    stored = project.trainer.row_store.size()
    assert stored >= 300  # pool, test and stop-set rows, featurized once
    again = Project(project.root)
    result = again.round()
    assert result.number == 1 and result.queried == 10
    # Same pool, same featurizer version: loaded from disk, not refitted, and no pool row featurized again.
    assert sorted((project.state_dir / "models").glob("featurizer-*")) == featurizers
    assert list((project.state_dir / ROWS_DIR).iterdir()) == [version_dir]
    assert again.trainer.row_store.featurized == 0 and again.trainer.row_store.size() == stored
    assert again.load_model()[1].featurizer_key_ == Project(project.root).load_model(first.version)[1].featurizer_key_
    again.close()


def test_a_later_round_reads_no_pool_text_and_picks_what_scoring_every_text_picks(project, small_pool, monkeypatch):
    from synthloop.learn import measures

    _load(project, small_pool)
    project.round()
    again = Project(project.root)
    number, _ = again.store.open_round()
    _, model = again.train(number)
    ids, texts = again.store.unlabeled_pool()
    scores = measures.uncertainty("margin", model.predict_proba(texts))  # the model's own featurizer, every text
    expected = [str(i) for i in measures.top_k(np.asarray(ids), scores, 10)[0]]
    read: list[int] = []
    texts_of = again.store.texts_of
    monkeypatch.setattr(again.store, "texts_of", lambda ids: read.append(len(ids)) or texts_of(ids))
    monkeypatch.setattr(again.store, "unlabeled_pool", lambda *a, **k: pytest.fail("the pool's texts were read"))
    scorer = again.scorer(number)
    assert [i for i, _ in selection.select(scorer, model, "margin", 10)] == expected
    assert read == [] and scorer.scored == len(ids)
    again.close()


def test_the_featurizers_pool_sample_is_random_sample_of_the_texts_in_id_order(project, small_pool, monkeypatch):
    import importlib
    import random

    _load(project, small_pool)
    ids, texts = project.store.unlabeled_pool()
    # The module, not the `examples` table that synthloop.store also exports under that name.
    monkeypatch.setattr(importlib.import_module("synthloop.store.examples"), "ID_PAGE_ROWS", 64)  # several pages of ids
    assert project.store.pool_texts_sample(50, 7) == random.Random(7).sample(texts, 50)
    assert project.store.pool_texts_sample(1000, 7) == texts  # a pool smaller than the sample: all of it


def test_rows_follow_the_pool_when_it_grows(project, small_pool, tmp_path):
    import pandas as pd

    _load(project, small_pool)
    project.round()
    key = project.load_model()[1].featurizer_key_
    extra = pd.DataFrame({"text": [f"brand new text number {i} win cash" for i in range(20)]})
    extra.to_csv(tmp_path / "extra.csv", index=False)
    project.import_file(tmp_path / "extra.csv")
    project.round()
    # TF-IDF is fitted on the pool: a pool that changed is a new featurizer version with its own rows.
    assert project.load_model()[1].featurizer_key_ != key
    assert len(list((project.state_dir / ROWS_DIR).iterdir())) == 2


def test_cli_rounds_in_separate_processes_share_the_fitted_featurizer(project, small_pool):
    _load(project, small_pool)
    env = {**os.environ, "SYNTHLOOP_PAUSE_AT": ""}

    def round_():
        proc = subprocess.run([sys.executable, "-m", "synthloop", "round"], cwd=project.root, capture_output=True,
                              text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr

    round_()
    chunks = sorted((project.state_dir / ROWS_DIR).rglob("chunk-*"))
    featurizers = [(p.name, p.stat().st_mtime_ns) for p in (project.state_dir / "models").glob("featurizer-*")]
    assert chunks and len(featurizers) == 1
    round_()
    # The second process loaded the featurizer and read the rows: nothing rewritten, no chunk added.
    assert [(p.name, p.stat().st_mtime_ns) for p in (project.state_dir / "models").glob("featurizer-*")] == featurizers
    assert sorted((project.state_dir / ROWS_DIR).rglob("chunk-*")) == chunks
    assert len(project.store.rounds()) == 2
