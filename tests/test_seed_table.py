"""scripts/reproduce_seed_table.py: the committed table is what its committed JSON renders to, and the
compact-model part of the pipeline runs for real on the SMS sample with a small budget."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score
from threadpoolctl import threadpool_limits

from synthloop import Project
from synthloop.report.impact import GPT4O_SECONDS_PER_REQUEST
from synthloop.synth import synthetic_labels

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def seed_table():
    spec = importlib.util.spec_from_file_location("reproduce_seed_table", ROOT / "scripts" / "reproduce_seed_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed():
    return json.loads((BENCH / "seed_table.json").read_text())


def test_committed_markdown_is_rendered_from_the_committed_json(seed_table, committed, tmp_path):
    # A hand edit of seed_table.md, or a renderer change without re-rendering, fails here:
    # `python scripts/reproduce_seed_table.py --from-json` rewrites the .md.
    assert seed_table.markdown(committed) == (BENCH / "seed_table.md").read_text()
    assert seed_table.render(BENCH / "seed_table.json", tmp_path) == (tmp_path / "seed_table.md").read_text()


def table_line(md: str, start: str) -> list[str]:
    [line] = [line for line in md.splitlines() if line.startswith(f"| {start}")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_each_column_says_what_it_counts(seed_table, committed):
    md = seed_table.markdown(committed)
    sizes = [sum(t["synthetic_seed"]["kept"].values()) for t in committed["tasks"].values()]
    assert sizes == [200, 400, 500]  # 100 per class of 2, 4 and 5 classes
    seed = table_line(md, "compact model, synthetic only")
    assert seed[0] == "compact model, synthetic only (N = 100/class: 200 / 400 / 500 texts)"
    # The local LLM's SMS accuracy is near zero because it abstained on most texts: the cell says so.
    spam = committed["tasks"]["sms_spam"]["labeler"]
    local = table_line(md, "local LLM")
    assert local[1] == f"{spam['accuracy']:.3f} (abstained {spam['abstained']}/{spam['n']})" == "0.020 (abstained 90/100)"
    assert local[2] == "0.450" and local[3] == "0.250"  # no abstentions there, so no note
    assert "of the 10 it answered (answers: spam 10), 0.200 were right" in md
    # Every row has $ and latency per 1k; GPT-4o's latency is the assumption from synthloop.report.impact, marked.
    gpt4o = table_line(md, "GPT-4o, published")
    assert gpt4o[-1] == f"≈{1000 * GPT4O_SECONDS_PER_REQUEST:,.0f} s est., sequential" == "≈750 s est., sequential"
    assert "estimate, not a measurement" in md
    for line in md.split("## Active-learning curve")[0].splitlines():
        if line.startswith("| ") and not line.startswith("| |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert cells[-2].startswith("$") and cells[-1] not in ("", "not measured here"), line


def test_a_row_named_differently_per_task_is_refused(seed_table):
    rows = [{"row": "compact model after 50 active labels"}, {"row": "compact model after 40 active labels"}]
    with pytest.raises(ValueError, match="row names differ"):
        seed_table.row_name(rows, [{}, {}])


@pytest.fixture
def seed_project(tmp_path, small_pool):
    """What bench_synthetic leaves for the table: a project with a hidden-gold pool, a test split and
    synthetic examples only (here texts from the sample's unused pool rows, standing in for the LLM's)."""
    extra = pd.read_csv(ROOT / "examples" / "sms_spam" / "pool.csv").iloc[300:]
    texts = {label: list(extra[extra.label == label].text[:10]) for label in ("ham", "spam")}
    project = Project.init(tmp_path / "seed", small_pool / "task.toml")
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    project.store.add_examples(*synthetic_labels(texts, "fixture"))
    project.close()
    return tmp_path / "seed", small_pool / "test.csv"


def test_the_compact_model_rows_from_a_real_small_run(seed_table, seed_project, tmp_path):
    source, test_csv = seed_project
    before = sorted(p.name for p in source.rglob("*"))
    with threadpool_limits(1):
        curve = seed_table.active_learning("sms_spam", source, work=tmp_path / "work", checkpoints=[10, 20], batch=10,
                                           test_csv=test_csv)
    assert [p["labels"] for p in curve] == [0, 10, 20]
    assert all(p["seconds_per_1k"] > 0 for p in curve) and len({p["model_version"] for p in curve}) == 3
    # The rounds ran on a copy: the oracle's labels are there, the source project is as it was.
    copy = Project(tmp_path / "work")
    try:
        assert copy.n_real_labels() == 20 and {s for s, _, _ in copy.store.label_counts()} == {"oracle", "synthetic:fixture"}
        # Each point's scores are its model version's on the test rows (those not already in the pool),
        # recomputed here with scikit-learn.
        test = pd.read_csv(test_csv)
        test = test[~test.text.isin(pd.read_csv(test_csv.parent / "pool.csv").text)]
        for point in curve:
            predicted = copy.load_model(point["model_version"])[1].predict(list(test.text))
            assert point["accuracy"] == pytest.approx(accuracy_score(test.label, predicted))
            assert point["macro_f1"] == pytest.approx(f1_score(test.label, predicted, average="macro"))
    finally:
        copy.close()
    assert sorted(p.name for p in source.rglob("*")) == before

    # The rest of a task's column comes from bench_synthetic's results; here the committed seed table's own
    # SMS labeling run (synthetic.json now holds a news-only run of another model, without a labeler stage).
    sms = json.loads((BENCH / "seed_table.json").read_text())["tasks"]["sms_spam"]
    local = {"llm": "smollm2-135m-instruct", "labeler": sms["labeler"], "majority_accuracy": sms["majority_accuracy"],
             "seed_model": [{"per_class": 10, "kept": {"ham": 10, "spam": 10}}]}
    task = seed_table.task_rows("sms_spam", local, curve)
    md = seed_table.markdown({"machine": "test", "minutes": 0.1, "openai": False, "tasks": {"sms_spam": task}})
    assert table_line(md, "compact model, synthetic only")[:2] == ["compact model, synthetic only (N = 10/class: 20 texts)",
                                                                     f"{curve[0]['accuracy']:.3f}"]
    assert table_line(md, "compact model after 20 active labels")[1:] == [f"{curve[-1]['accuracy']:.3f}", "$0",
                                                                          f"{curve[-1]['seconds_per_1k']:.2f} s"]
    assert table_line(md, "local LLM")[1] == "0.020 (abstained 90/100)"
    assert "| 20 | " in md.split("## Active-learning curve")[1]
    shutil.rmtree(tmp_path / "work")
