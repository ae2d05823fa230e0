import functools
import json
import re
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from synthloop import Project, SynthloopError
from synthloop.report import build_report, measure_model_latency
from synthloop.store import NewLabel

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
RANDOM = [{"labels": 0, "accuracy": 0.33, "macro_f1": 0.27}, {"labels": 10, "accuracy": 0.6, "macro_f1": 0.5},
          {"labels": 20, "accuracy": 0.7, "macro_f1": 0.6}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One project, three rounds, a few planted wrong labels, one full report: shared by the tests below."""
    import pandas as pd

    from conftest import EXAMPLE

    tmp = tmp_path_factory.mktemp("report")
    pd.read_csv(EXAMPLE / "pool.csv").head(300).to_csv(tmp / "pool.csv", index=False)
    pd.read_csv(EXAMPLE / "test.csv").head(200).to_csv(tmp / "test.csv", index=False)
    project = Project.init(tmp / "proj", EXAMPLE / "task.toml", loop={"batch_size": 10})
    project.import_file(tmp / "pool.csv", label_col="label", gold=True)
    project.import_file(tmp / "test.csv", label_col="label", split="test")
    with threadpool_limits(1):  # small fits; on a busy 2-core machine extra BLAS threads only slow them down
        project.loop(3)
    # Obvious spam labeled ham by a "human": the label check should point at them.
    ids, texts = project.store.unlabeled_pool()
    gold = project.store.gold_for(ids)
    spam = [eid for eid in ids if gold.get(eid) == "spam"][:3]
    ham = [eid for eid in ids if gold.get(eid) == "ham"][:12]
    project.store.record_labels([NewLabel(eid, "ham", "human:test") for eid in spam]
                                + [NewLabel(eid, "ham", "human:test") for eid in ham], 2)
    # Where an LLM and a human both labeled an example, the report compares them.
    project.store.record_labels([NewLabel(eid, "spam" if k == 0 else "ham", "llm:gpt-4o") for k, eid in enumerate(ham[:4])], 2)
    # What an LLM run leaves behind: usage rows (generation outside any round, labeling in round 1) and
    # minority top-up counts.
    call = {"model": "gpt-4o", "latency": 1.0, "cached": False, "ok": True}
    project.store.record_llm_calls([{**call, "purpose": "generate", "prompt_tokens": 150, "completion_tokens": 250,
                                     "cost": 0.003, "round": None}] * 4
                                   + [{**call, "purpose": "label", "prompt_tokens": 300, "completion_tokens": 15,
                                       "cost": 0.0009, "round": 1}] * 10)
    project.store.update_round(1, counts={**project.store.round(1)["counts"], "synthetic_added": {"spam": 6}})
    with pytest.MonkeyPatch.context() as mp:
        # The same measurement on fewer calls (the defaults are 200 single calls and a batch of 1,000).
        mp.setattr("synthloop.report.measure_model_latency", functools.partial(measure_model_latency, singles=50, batch=300))
        report = build_report(project, baselines={"random": RANDOM})
    yield project, report, spam
    project.close()


def test_report_files_and_learning_curve(built):
    project, report, _ = built
    paths = {k: Path(v) for k, v in report["paths"].items()}
    assert paths["html"].parent == project.state_dir / "reports"
    assert all(p.is_file() for p in paths.values())
    on_disk = json.loads(paths["json"].read_text())
    assert [p["labels"] for p in on_disk["curve"]] == [0, 10, 20]
    assert all(0 <= p["accuracy"] <= 1 and 0 <= p["macro_f1"] <= 1 for p in on_disk["curve"])
    assert set(on_disk["per_class_f1"]["f1"]) == {"ham", "spam"} and len(on_disk["per_class_f1"]["f1"]["spam"]) == 3
    assert on_disk["labels_by_source"]["oracle"] and on_disk["labels_by_source"]["human:test"] == {"ham": 15}
    assert on_disk["monitor"] and on_disk["monitor"][-1]["mean_margin"] is not None


def test_markdown_has_the_tables(built):
    _, report, _ = built
    md = Path(report["paths"]["md"]).read_text()
    assert "| round | real labels | accuracy | macro-F1 |" in md
    assert "| class | precision | recall | F1 | support |" in md
    assert "| source | ham | spam | total |" in md
    assert "$ per 1k" in md and "GPT-4o" in md


def test_baseline_is_included(built):
    _, report, _ = built
    assert report["baselines"]["random"] == RANDOM
    assert report["summary"]["vs"]["random"]["accuracy_at_same_labels"] == pytest.approx(0.7)
    html = Path(report["paths"]["html"]).read_text()
    assert "random: labels" in html and "Random at 20 labels" in html


def test_label_quality_flags_planted_labels_and_compares_llm_with_human(built):
    project, report, planted = built
    quality = report["label_quality"]
    assert quality["n_checked"] == len(project.store.training_set()) and quality["suspicious"]
    flagged = {x["id"] for x in quality["suspicious"]}
    assert flagged & set(planted), quality["suspicious"]
    assert {"id", "text", "given", "predicted", "score"} <= set(quality["suspicious"][0])
    agreement = quality["agreement"]
    assert agreement["n"] == 4 and agreement["agreement"] == 0.75 and len(agreement["disagreements"]) == 1


def test_label_quality_without_cleanlab_falls_back_to_disagreements(built, monkeypatch):
    from synthloop.report import label_quality

    project = built[0]
    monkeypatch.setitem(__import__("sys").modules, "cleanlab.filter", None)  # makes the import fail
    with threadpool_limits(1):
        quality = label_quality(project, project.load_model()[1])
    assert "install cleanlab" in quality["method"] and len(quality["suspicious"]) >= 10
    disagree = [x for x in quality["suspicious"] if x["given"] != x["predicted"]]
    assert all(x["flagged"] for x in disagree) and quality["n_flagged"] == len(disagree)


def test_cost_latency_and_savings(built):
    _, report, _ = built
    latency = report["latency"]
    assert 0 < latency["p50_ms"] <= latency["p95_ms"] and latency["throughput_per_s"] > 0
    cf = report["counterfactual"]
    assert cf["prompt_tokens"] > 50 and cf["rows"][1]["usd_per_1k"] > 0.1
    llm = report["llm"]
    assert llm["total_cost"] == pytest.approx(0.021) and llm["by_purpose"]["label"]["calls"] == 10
    assert [r.get("label", 0) for r in llm["per_round"]] == pytest.approx([0, 0.009, 0])
    assert cf["break_even_predictions"] == pytest.approx(0.021 / cf["usd_per_request"], abs=1)
    assert report["synthetic_added"] == [{"round": 1, "spam": 6}]
    assert report["co2"]["estimate"] is True and ("measured_kg_co2" in report["co2"] or report["co2"]["note"])


def test_no_rounds_is_an_error_that_names_the_fix(project):
    with pytest.raises(SynthloopError, match="synthloop round"):
        build_report(project)


def test_cli_report_json(built, tmp_path, monkeypatch):
    from typer import Typer
    from typer.testing import CliRunner

    from synthloop.cli_report import report as report_command

    monkeypatch.setattr("synthloop.report._co2_start", lambda country: "turned off in this test")
    app = Typer()
    app.command()(report_command)
    result = CliRunner().invoke(app, ["--project", str(built[0].root), "--out", str(tmp_path), "--json", "--no-latency"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["latency"] is None and Path(data["paths"]["html"]).parent == tmp_path
    missing = CliRunner().invoke(app, ["--project", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2


def test_report_renders_in_a_browser(built):
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install -y chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    _, report, _ = built
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with playwright.sync_playwright() as p:
        # launch() gives the browser a fresh temporary --user-data-dir of its own.
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(Path(report["paths"]["html"]).as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(artifacts / "report.png"), full_page=True)
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
            text = page.inner_text("body")
        finally:
            browser.close()
    assert sum(w >= 200 for w in widths) >= 4 and len(widths) == 7, widths
    assert not re.search(r"Traceback|\bError\b|\bnan\b", text, re.IGNORECASE), text[:500]
