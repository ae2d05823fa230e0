"""Every selection path (in memory, cached scores, streamed through synthloop.learn.scale) picks the same examples
and stores the same score for them, on the measure registry's one scale (higher = less sure, in [0, 1])."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from synthloop import Project
from synthloop.learn import measures, selection
from synthloop.learn.scale import score_pool

STRATEGIES = ("least-confident", "margin", "entropy", "ranked-batch")


@pytest.fixture
def trained(project, small_pool):
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    project.round()  # round 0: a model, and 10 labels so that ranked-batch has a training set
    number, _ = project.store.open_round()
    version, model = project.train(number)
    return project, number, version, model


def scorers(project, number):
    pool = project.store.unlabeled_pool
    return {
        "in memory": selection.InMemory(pool, project.trainer.model_features),
        "cached": selection.Cached(pool, project.trainer.model_features, project.store, project.store.round(number).model_version),
        "streamed": selection.Streamed(lambda: project.store.unlabeled_pool_chunks(37), "local", chunk_size=37),
        "project default": project.scorer(number),
        "project incremental": project.scorer(number, incremental=True),
        "project engine": project.scorer(number, engine="local"),
    }


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_path_picks_the_same_examples_with_the_same_scores(trained, strategy):
    project, number, _, model = trained
    training = lambda: project.training_data()[:2]  # noqa: E731
    results = {name: selection.select(scorer, model, strategy, 12, training=training, seed=3)
               for name, scorer in scorers(project, number).items()}
    expected = results["in memory"]
    assert len(expected) == 12 and len({i for i, _ in expected}) == 12
    for name, picks in results.items():
        assert picks == expected, name
    # The cached path read its own cache the second time: still the same.
    again = selection.select(scorers(project, number)["cached"], model, strategy, 12, training=training)
    assert again == expected

    # The scores are the measure's, recomputed here from the model's probabilities.
    ids, texts = project.store.unlabeled_pool()
    measure = measures.measure_of(strategy)
    proba = model.predict_proba(texts)
    values = dict(zip(ids, measures.uncertainty(measure, proba)))
    assert [s for _, s in expected] == pytest.approx([values[i] for i, _ in expected], abs=1e-9)
    # And the registry's scale from first principles (higher = less sure, 0 = certain, 1 = a uniform guess).
    top = np.sort(proba, axis=1)
    by_hand = {"least-confident": 1 - top[:, -1], "margin": 1 - (top[:, -1] - top[:, -2]),
               "entropy": -(proba * np.log(np.clip(proba, 1e-300, None))).sum(axis=1) / np.log(proba.shape[1])}[measure]
    assert [values[i] for i in ids] == pytest.approx(list(by_hand), abs=1e-9)
    if strategy != "ranked-batch":  # the most uncertain first; nothing left behind is more uncertain
        scores = [s for _, s in expected]
        assert scores == sorted(scores, reverse=True)
        assert scores[-1] >= max(v for i, v in values.items() if i not in dict(expected))


def test_margin_is_reported_as_one_minus_the_gap(trained):
    project, number, _, model = trained
    [(eid, score)] = selection.select(project.scorer(number), model, "margin", 1)
    text = dict(zip(*project.store.unlabeled_pool()))[eid]
    p = np.sort(model.predict_proba([text])[0])
    assert score == pytest.approx(1 - (p[-1] - p[-2]), abs=1e-9)  # p1 - p2 is small for the least sure: near 1


def test_score_pool_on_a_file_gives_the_store_paths_scores(trained, small_pool):
    project, number, _, model = trained
    expected = selection.select(project.scorer(number), model, "margin", 10)
    queried = {q.example_id for q in project.store.queries()} | {r[0] for r in project.store.training_set()}
    assert score_pool(model, small_pool / "pool.csv", k=10, n_jobs=1, exclude_ids=queried) == expected


def test_rounds_on_every_path_store_the_same_query_scores_and_argilla_metadata(trained, tmp_path):
    pytest.importorskip("argilla")
    from synthloop.labelers.argilla import ArgillaLabeler

    project, number, _, _ = trained
    project.store.engine.dispose()
    twins = {}
    for name, options in (("memory", {}), ("cached", {"incremental": True}), ("engine", {"engine": "local"})):
        shutil.copytree(project.root, tmp_path / name)
        twins[name] = (Project(tmp_path / name), options)
    try:
        stored = {}
        for name, (twin, options) in twins.items():
            twin.round(route=False, **options)
            queries = twin.store.queries(round_=number)
            stored[name] = [(q.example_id, q.score) for q in queries]
            records = ArgillaLabeler(twin.label_context()).records(queries)
            # Argilla shows the score rounded to 3 digits, most uncertain first: the same score, whichever path.
            assert {str(r.id): r.metadata["uncertainty"] for r in records} == {q.example_id: round(q.score, 3) for q in queries}
        assert len(stored["memory"]) == 10
        assert stored["cached"] == stored["memory"] and stored["engine"] == stored["memory"]
    finally:
        for twin, _ in twins.values():
            twin.close()
