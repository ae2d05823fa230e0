import numpy as np
import pytest

from synthloop import Project, SynthloopError, simulate


@pytest.fixture(autouse=True)
def _on_both_stores(db):
    """Every test here runs on SQLite; those marked both_stores on a real PostgreSQL server too (the db fixture
    sets the URL)."""


def load(project, data):
    project.import_file(data / "pool.csv", label_col="label", gold=True)
    project.import_file(data / "test.csv", label_col="label", split="test")


@pytest.mark.both_stores
def test_round_zero_trains_on_task_examples_then_rounds_add_labels(project, small_pool):
    load(project, small_pool)
    first = project.round()
    assert first.number == 0 and first.n_labels == 0 and first.model_version == 1
    # The stored accuracy is the model's on the test split, recomputed here from its predictions.
    texts, gold = project.store.test_set()
    _, model = project.load_model(first.model_version)
    hits = sum(p == g for p, g in zip(model.predict(texts), gold))
    assert first.metrics["n_test"] == len(texts) > 100 and first.metrics["accuracy"] == pytest.approx(hits / len(texts))
    assert first.queried == 10 and first.labels_collected == 10
    second = project.round()
    assert second.number == 1 and second.n_labels == 10
    labels = project.store.training_set()
    assert len(labels) == 20 and {r[3] for r in labels} == {"oracle"}
    assert project.store.query_counts() == {"labeled": 20}
    info = project.store.round(1)
    assert info.status == "done" and {"train", "evaluate", "select", "route"} <= set(info.timings)


def test_loop_stops_when_pool_is_exhausted(project, small_pool, tmp_path):
    import pandas as pd

    pd.read_csv(small_pool / "pool.csv").head(25).to_csv(tmp_path / "tiny.csv", index=False)
    project.import_file(tmp_path / "tiny.csv", label_col="label", gold=True)
    results = project.loop(10)
    assert len(results) < 10 and results[-1].queried == 0
    assert len(project.store.queries()) == len(project.store.training_set())


@pytest.mark.both_stores
def test_query_then_label_by_steps(project, small_pool):
    load(project, small_pool)
    result = project.round(route=False)
    assert result.queried == 10 and project.store.query_counts() == {"pending": 10}
    assert project.store.round(0).status == "open"
    again = project.round(route=False)  # resumes the open round, selects nothing new
    assert again.number == 0 and project.store.query_counts() == {"pending": 10}
    assert project.label() == 10
    assert project.store.query_counts() == {"labeled": 10}
    closed = project.store.round(0)  # label() closed the round: its queries are out and back
    assert closed.status == "done" and closed.counts["queried"] == 10 and closed.counts["labels_collected"] == 10
    following = project.round()  # so the next round trains on those labels and selects anew
    assert following.number == 1 and following.n_labels == 10 and following.queried == 10
    assert following.model_version == 2 and project.store.query_counts() == {"labeled": 20}


def test_label_with_unknown_labeler_changes_nothing(project, small_pool):
    load(project, small_pool)
    project.round(route=False)
    with pytest.raises(SynthloopError, match="unknown labeler"):
        project.label("crowd")
    assert {q.routed_to for q in project.store.queries()} == {"oracle"}


@pytest.mark.both_stores
def test_predict_status_export(project, small_pool, tmp_path):
    load(project, small_pool)
    project.loop(2)
    [pred] = project.predict(["WINNER! claim your free prize, call 09061234567"])
    assert pred["label"] in ("ham", "spam") and abs(sum(pred["probabilities"].values()) - 1) < 1e-6
    status = project.status()
    # The loop ends with a model on every label: round 1's 10 came back after its model was trained.
    assert status["rounds"] == 2 and sum(status["labels"]["oracle"].values()) == 20
    assert status["last_metrics"]["n_labels"] == 20 and status["last_metrics"]["model_version"] == 3
    assert status["model_version"] == 3 and pred["model_version"] == 3
    for suffix in (".csv", ".jsonl", ".parquet"):
        assert project.export(tmp_path / f"out{suffix}") == 20
    with pytest.raises(SynthloopError, match="cannot export"):
        project.export(tmp_path / "out.xls")


@pytest.mark.both_stores
def test_after_a_loop_the_last_labels_are_in_the_model_and_its_metrics(project, small_pool):
    load(project, small_pool)
    results = project.loop(3)
    assert [r.n_labels for r in results] == [0, 10, 20]  # each round's model: the labels before it
    latest = project.store.latest_model()
    assert latest.round is None and latest.metrics["n_labels"] == 30 == project.n_real_labels()
    assert latest.n_train == len(project.training_data()[0]) and not project.training_changed()
    assert latest.metrics["n_test"] == results[-1].metrics["n_test"]
    status = project.status()["last_metrics"]
    assert status == {"round": 2, "model_version": latest.version,
                      **{k: latest.metrics[k] for k in ("n_labels", "accuracy", "macro_f1")}}
    assert project.loop(0) == [] and project.store.latest_model().version == latest.version
    after = project.round()  # the next round trains its own model, as every round does, and reports it
    assert after.number == 3 and after.n_labels == 30 and project.status()["last_metrics"]["model_version"] == after.model_version


def test_project_reopens_from_disk(project, small_pool):
    load(project, small_pool)
    project.round()
    again = Project(project.root)
    assert again.round().number == 1 and again.store.latest_model().version == 2


def test_init_refuses_existing_project(project, example_dir):
    with pytest.raises(SynthloopError, match="already exists"):
        Project.init(project.root, example_dir / "task.toml")


def test_simulate_curve_contract(small_pool):
    result = simulate(small_pool / "task.toml", small_pool / "pool.csv", small_pool / "test.csv",
                      strategy="margin", budget=30, batch=10, seed=0)
    assert set(result) == {"curve", "seconds"}
    assert [p["labels"] for p in result["curve"]] == [0, 10, 20, 30]
    for point in result["curve"]:
        assert set(point) == {"labels", "accuracy", "macro_f1"}
    # 30 labels chosen by margin beat always answering the commonest class of the test split.
    import pandas as pd

    majority = pd.read_csv(small_pool / "test.csv").label.value_counts(normalize=True).max()
    assert result["curve"][-1]["accuracy"] > majority


def test_simulate_is_reproducible(small_pool):
    args = (small_pool / "task.toml", small_pool / "pool.csv", small_pool / "test.csv")
    a = simulate(*args, strategy="random", budget=20, batch=10, seed=1)["curve"]
    b = simulate(*args, strategy="random", budget=20, batch=10, seed=1)["curve"]
    assert a == b


def test_rounds_record_pool_uncertainty_and_stopping_state(project, small_pool):
    load(project, small_pool)
    project.loop(3)
    rounds = project.store.rounds()
    assert rounds[0].metrics["stopping"]["kappa"] is None
    # Each round measured the pool before selecting: every pool example less those earlier rounds queried.
    n_pool = project.store.count_examples()[("pool", "pool")]
    queried = [len(project.store.queries(round_=r.number)) for r in rounds]
    assert [r.metrics["pool"]["n"] for r in rounds] == [n_pool - sum(queried[:k]) for k in range(len(rounds))]
    # The last round's figures, recomputed with its model's own predict on that pool: now's unlabeled examples
    # plus what that round queried (labeled since), in id order as the monitor reads them.
    last = rounds[-1]
    ids, texts = project.store.unlabeled_pool()
    at_monitor = sorted([*zip(ids, texts), *((q.example_id, q.text) for q in project.store.queries(round_=last.number))])
    proba = project.load_model(last.model_version)[1].predict_proba([t for _, t in at_monitor])
    top2 = np.sort(proba, axis=1)[:, -2:]
    pool = last.metrics["pool"]
    assert pool["mean_confidence"] == pytest.approx(float(proba.max(axis=1).mean()))
    assert pool["mean_margin"] == pytest.approx(float((top2[:, 1] - top2[:, 0]).mean()))  # modAL's: top minus second
    assert pool["mean_entropy"] == pytest.approx(float(-(proba * np.log(np.clip(proba, 1e-12, None))).sum(axis=1).mean()))
    # The stored kappa is the agreement of rounds 1 and 2's models on the stop set, recomputed here.
    from sklearn.metrics import cohen_kappa_score

    _, stop_texts = project.store.stop_set(project.config.loop.stop_set_size)
    before, after = (project.load_model(rounds[k].model_version)[1].predict(stop_texts) for k in (1, 2))
    expected = 1.0 if list(before) == list(after) else cohen_kappa_score(before, after)
    assert rounds[2].metrics["stopping"]["kappa"] == pytest.approx(expected)


def test_loop_until_stable_stops_early(project, small_pool):
    load(project, small_pool)
    project.config.loop.stop_kappa = 0.05  # a loose threshold, so the tiny pool stabilizes within a few rounds
    project.config.loop.stop_window = 1
    results = project.loop(8, until_stable=True)
    stops = [r.metrics["stopping"]["should_stop"] for r in results]
    assert len(results) < 8 and stops[-1] and not any(stops[:-1])


def test_status_shows_cost_and_impact(project, small_pool):
    load(project, small_pool)
    project.round()
    call = {"model": "gpt-4o", "latency": 1.0, "cached": False, "ok": True, "round": 0}
    project.store.record_llm_calls([{**call, "purpose": "label", "prompt_tokens": 300, "completion_tokens": 15, "cost": 0.0009}] * 4
                                   + [{**call, "purpose": "generate", "prompt_tokens": 150, "completion_tokens": 250, "cost": 0.003}])
    impact = project.status()["impact"]
    assert impact["llm_spent_usd"] == pytest.approx(0.0066) and impact["llm_tokens"] == 4 * 315 + 400
    assert impact["llm_by_purpose"]["label"]["calls"] == 4 and impact["llm_by_purpose"]["generate"]["completion_tokens"] == 250

    model = impact["compact_model"]
    assert model["model_version"] == 1 and not model["cached"] and model["batch_texts"] == 1000
    # Sane on any machine this runs on: a TF-IDF + logistic regression model is far from a second per text.
    assert 0 < model["seconds_per_1k_batched"] < 60 and 0 < model["seconds_per_1k_one_by_one"] < 600
    cf = impact["counterfactual"]
    local, gpt = cf["rows"]
    assert local["usd_per_1k"] == 0 and local["seconds_per_1k_batched"] == model["seconds_per_1k_batched"]
    assert 0.05 < gpt["usd_per_1k"] < 5 and gpt["seconds_per_1k_one_by_one"] == 750
    pool = cf["whole_pool"]
    assert pool["texts"] == project.store.count_examples()[("pool", "pool")] > 250
    assert pool["usd"] == pytest.approx(pool["texts"] * cf["usd_per_request"]) and pool["seconds_one_by_one"] == pool["texts"] * 0.75
    assert cf["break_even_predictions"] == pytest.approx(0.0066 / cf["usd_per_request"], abs=1)

    # Measured once per model version: the next status reads the store, a new version is timed afresh.
    again = project.status()["impact"]["compact_model"]
    assert again["cached"] and again["measured_at"] == model["measured_at"]
    project.round()
    newer = project.status()["impact"]["compact_model"]
    assert newer["model_version"] == 2 and not newer["cached"]
    assert project.store.get_meta("inference_latency:v1")["measured_at"] == model["measured_at"]


def test_status_without_a_model_still_estimates_gpt4o(project, small_pool):
    load(project, small_pool)
    impact = project.status()["impact"]
    assert impact["compact_model"] is None and "synthloop round" in impact["compact_model_note"]
    assert [r["what"] for r in impact["counterfactual"]["rows"]] == ["GPT-4o, one request per prediction (estimate)"]
    assert impact["counterfactual"]["whole_pool"]["usd"] > 0 and impact["llm_spent_usd"] == 0
