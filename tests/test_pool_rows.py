"""A later round scores the pool's stored feature rows as they lie (synthloop.learn.pool_rows): the same picks
as walking the store's ids, labeled and asked examples left out, a grown pool featurized and rebuilt."""

import numpy as np
import pandas as pd

from synthloop import Project
from synthloop.learn import pool_rows
from synthloop.learn.selection import InMemory, select
from synthloop.task import TaskSpec


def _project(tmp_path, n=600):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words, 8)) + (" good" if i % 2 else " bad") for i in range(n)]
    pd.DataFrame({"text": texts, "label": ["pos" if i % 2 else "neg" for i in range(n)]}).to_csv(tmp_path / "pool.csv", index=False)
    labels = [{"name": "pos", "examples": ["w1 w2 good", "w3 w4 good"]},
              {"name": "neg", "examples": ["w5 w6 bad", "w7 w8 bad"]}]
    task = TaskSpec.model_validate({"name": "t", "description": "two", "labels": labels})
    project = Project.init(tmp_path / "p", task, model={"name": "hashing-lr", "calibrate": False},
                           loop={"batch_size": 20, "strategy": "margin", "labeler": "oracle"})
    project.import_file(tmp_path / "pool.csv", label_col="label", gold=True)
    return project


def _walked(project, model, measure="margin", k=20):
    trainer = project.trainer
    scorer = InMemory(project.store.unlabeled_pool, trainer.model_features,
                      lambda: project.store.unlabeled_pool_ids(50), project.store.texts_of)  # no stored pool rows
    return select(scorer, model, measure, k)


def test_pool_rows_pick_what_walking_the_store_picks(tmp_path):
    project = _project(tmp_path)
    for _ in range(3):
        project.round()
    _, model = project.train()
    fast = project.trainer.scorer(99)
    picks = select(fast, model, "margin", 20)
    assert picks == _walked(project, model)
    assert fast.scored == len(project.store.unlabeled_pool()[0])
    taken = project.store.taken_ids()
    assert len(taken) >= 60 and not taken & {i for i, _ in picks}
    key, featurizer = project.trainer.cached_featurizer(model)
    rows = project.trainer.rows(key, featurizer)
    files = list(rows.dir.glob("pool-*.npy"))
    assert len(files) == 1 and len(np.load(files[0])) == 600


def test_a_grown_pool_gets_new_rows_and_a_new_file(tmp_path):
    project = _project(tmp_path)
    project.round()
    _, model = project.train()
    select(project.trainer.scorer(1), model, "margin", 20)
    key, featurizer = project.trainer.cached_featurizer(model)
    rows = project.trainer.rows(key, featurizer)
    (old,) = rows.dir.glob("pool-*.npy")
    pd.DataFrame({"text": [f"brand new text number {i} good" for i in range(30)]}).to_csv(tmp_path / "more.csv", index=False)
    project.import_file(tmp_path / "more.csv")
    picks = select(project.trainer.scorer(1), model, "margin", 20)
    assert picks == _walked(project, model)
    (new,) = rows.dir.glob("pool-*.npy")
    assert new != old and len(np.load(new)) == 630
    assert pool_rows.load(rows, project.store.pool_stamp()) is not None


def test_ids_of_their_own_walk_the_store(tmp_path):
    project = _project(tmp_path, n=100)
    pd.DataFrame({"id": ["own-1", "own-2"], "text": ["one more good", "two more bad"]}).to_csv(tmp_path / "ids.csv", index=False)
    project.import_file(tmp_path / "ids.csv", id_col="id")
    project.round()
    _, model = project.train()
    key, featurizer = project.trainer.cached_featurizer(model)
    rows = project.trainer.rows(key, featurizer)
    assert pool_rows.build(rows, project.store.pool_stamp(), project.store.pool_ids, project.store.texts_of) is None
    assert select(project.trainer.scorer(1), model, "margin", 20) == _walked(project, model)
