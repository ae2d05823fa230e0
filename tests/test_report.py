import functools
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from synthloop import Project, SynthloopError
from synthloop.report.project_report import build_report, measure_model_latency
from synthloop.store import NewLabel

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
RANDOM = [{"labels": 0, "accuracy": 0.33, "macro_f1": 0.27}, {"labels": 10, "accuracy": 0.6, "macro_f1": 0.5},
          {"labels": 20, "accuracy": 0.7, "macro_f1": 0.6}]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One project, three rounds, a few planted wrong labels, one full report: shared by the tests below."""
    import pandas as pd
    from helpers import EXAMPLE

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
    # "Obvious": the three spam texts the latest model is surest of, whatever the strategy left unlabeled.
    model = project.load_model()[1]
    candidates = [(eid, text) for eid, text in zip(ids, texts) if gold.get(eid) == "spam"]
    sure = model.predict_proba([text for _, text in candidates])[:, list(model.classes_).index("spam")]
    spam = [candidates[i][0] for i in sorted(range(len(candidates)), key=lambda i: (-sure[i], candidates[i][0]))[:3]]
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
    project.store.update_round(1, counts={**project.store.round(1).counts, "synthetic_added": {"spam": 6}})
    with pytest.MonkeyPatch.context() as mp:
        # The same measurement on fewer calls (the defaults are 200 single calls and a batch of 1,000).
        mp.setattr("synthloop.report.project_report.measure_model_latency", functools.partial(measure_model_latency, singles=50, batch=300))
        report = build_report(project.report_context(), baselines={"random": RANDOM})
    yield project, report, spam
    project.close()


def test_report_files_and_learning_curve(built):
    project, report, _ = built
    paths = {k: Path(v) for k, v in report["paths"].items()}
    assert paths["html"].parent == project.state_dir / "reports"
    assert all(p.is_file() for p in paths.values())
    on_disk = json.loads(paths["json"].read_text())
    assert [p["labels"] for p in on_disk["curve"]] == [0, 10, 20]
    # Each point is that round's model scored on the test split: predicted again here, through the model's own
    # predict (not the loop's cached features), and counted by hand.
    texts, gold = project.store.test_set()
    rounds = project.store.rounds()
    assert [p["round"] for p in on_disk["curve"]] == [r.number for r in rounds] == [0, 1, 2]
    for point, info in zip(on_disk["curve"], rounds):
        _, model = project.load_model(info.model_version)
        pred = list(model.predict(texts))
        f1 = []
        for label in project.task.label_names:
            hits = sum(p == g == label for p, g in zip(pred, gold))
            guessed, true = pred.count(label), list(gold).count(label)
            f1.append(0.0 if not hits else 2 * hits / (guessed + true))
        assert point["accuracy"] == pytest.approx(sum(p == g for p, g in zip(pred, gold)) / len(gold))
        assert point["macro_f1"] == pytest.approx(sum(f1) / len(f1))
    assert set(on_disk["per_class_f1"]["f1"]) == {"ham", "spam"} and len(on_disk["per_class_f1"]["f1"]["spam"]) == 3
    assert on_disk["labels_by_source"]["oracle"] and on_disk["labels_by_source"]["human:test"] == {"ham": 15}
    assert on_disk["monitor"] and on_disk["monitor"][-1]["mean_margin"] is not None


def test_monitor_has_the_stopping_criterion_per_round(built):
    project, report, _ = built
    monitor = report["monitor"]
    assert [r["round"] for r in monitor] == [r.number for r in project.store.rounds()]
    # The first model has none before it to agree with; every later one has a kappa against the one before.
    assert monitor[0]["kappa"] is None and monitor[0]["stable_rounds"] == 0
    # Each kappa is the agreement of that round's model with the one before on the fixed stop set, computed
    # here by hand from the two models' predictions.
    _, stop_texts = project.store.stop_set(project.config.loop.stop_set_size)
    versions = [r.model_version for r in project.store.rounds()]
    preds = [list(project.load_model(v)[1].predict(stop_texts)) for v in versions]
    for r, before, now in zip(monitor[1:], preds, preds[1:]):
        observed = sum(a == b for a, b in zip(before, now)) / len(now)
        chance = sum(before.count(lab) * now.count(lab) for lab in project.task.label_names) / len(now) ** 2
        assert r["kappa"] == pytest.approx(1.0 if before == now else (observed - chance) / (1 - chance))
    stable = 0
    for r in monitor:  # stop once `window` kappas in a row reach the threshold
        stable = stable + 1 if r["kappa"] is not None and r["kappa"] >= r["kappa_threshold"] else 0
        assert r["stable_rounds"] == stable and r["should_stop"] is (stable >= r["window"])
    assert all(r["kappa_threshold"] == project.config.loop.stop_kappa and r["window"] == project.config.loop.stop_window
               for r in monitor)
    stored = [r.metrics["stopping"] for r in project.store.rounds()]
    assert [(r["kappa"], r["should_stop"]) for r in monitor] == [(s["kappa"], s["should_stop"]) for s in stored]


def test_every_round_has_its_confusion_matrix_and_labels(built):
    project, report, planted = built
    per_round = report["per_round"]
    assert [r["round"] for r in per_round] == [0, 1, 2]
    for r, stored in zip(per_round, project.store.rounds()):
        assert r["confusion"] == stored.metrics["confusion"] and r["confusion"]["labels"] == ["ham", "spam"]
        assert sum(map(sum, r["confusion"]["matrix"])) == len(project.store.test_set()[0])  # the whole test split
    assert per_round[-1]["confusion"] == report["latest"]["confusion"]
    assert len({json.dumps(r["confusion"]) for r in per_round}) > 1  # the rounds' models differ
    # The oracle answered each round's 10 queries in that round; the planted labels were recorded in round 2.
    assert [sum(r["labels_added"].get("oracle", {}).values()) for r in per_round] == [10, 10, 10]
    assert per_round[2]["labels_added"]["human:test"] == {"ham": 15} and "human:test" not in per_round[1]["labels_total"]
    assert [sum(r["labels_total"]["oracle"].values()) for r in per_round] == [10, 20, 30]
    assert per_round[-1]["labels_total"] == report["labels_by_source"]


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
    # Each planted wrong label is flagged by cleanlab, or, where its filter stays quiet on so few labels,
    # ranked among the most suspicious: within the first 2 x planted of the list.
    top = [x["id"] for x in quality["suspicious"][:2 * len(planted)]]
    flagged = {x["id"] for x in quality["suspicious"] if x["flagged"]}
    assert all(eid in flagged or eid in top for eid in planted), quality["suspicious"][:10]
    assert quality["n_flagged"] == len(flagged) or quality["n_flagged"] > len(quality["suspicious"])
    assert {"id", "text", "given", "predicted", "score"} <= set(quality["suspicious"][0])
    agreement = quality["agreement"]
    assert agreement["n"] == 4 and agreement["agreement"] == 0.75 and len(agreement["disagreements"]) == 1


def test_label_quality_without_cleanlab_falls_back_to_disagreements(built, monkeypatch):
    from synthloop.report.project_report import label_quality

    project = built[0]
    monkeypatch.setitem(__import__("sys").modules, "cleanlab.filter", None)  # makes the import fail
    with threadpool_limits(1):
        quality = label_quality(project.store, project.config, project.new_model, project.load_model()[1])
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
    co2 = report["co2"]
    assert co2["estimate"] is True
    if importlib.util.find_spec("codecarbon") is None:
        assert co2["note"] == "codecarbon is not installed (pip install codecarbon)" and "measured_kg_co2" not in co2
    else:
        # Installed: the report's own work was metered, so there is a positive figure in kg, not a note.
        assert co2.get("measured_kg_co2", 0) > 0, co2
        assert co2["measured_kwh"] > 0 and co2["measured_seconds"] > 0 and co2["training_kg_co2"] > 0


def test_no_rounds_is_an_error_that_names_the_fix(project):
    with pytest.raises(SynthloopError, match="synthloop round"):
        build_report(project.report_context())


def test_cli_report_json(built, tmp_path, monkeypatch):
    from typer import Typer
    from typer.testing import CliRunner

    from synthloop.cli.report import report as report_command

    monkeypatch.setattr("synthloop.report.project_report._co2_start", lambda country: "turned off in this test")
    app = Typer()
    app.command()(report_command)
    result = CliRunner().invoke(app, ["--project", str(built[0].root), "--out", str(tmp_path), "--json", "--no-latency"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["latency"] is None and Path(data["paths"]["html"]).parent == tmp_path
    missing = CliRunner().invoke(app, ["--project", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2


def _browser_missing(reason: str):
    # In CI the browser test is part of what "passes" means: a missing browser is a broken setup, not a skip.
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and the report's browser test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _playwright():
    if not CHROMIUM.exists():
        _browser_missing(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        _browser_missing("playwright is not installed (pip install playwright)")
    return sync_api


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(__import__(__name__), "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set.*/nonexistent/chromium is missing"):
        _playwright()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="/nonexistent/chromium is missing"):
        _playwright()


EXTERNAL = r"^\s*(https?:)?//"


def test_report_renders_in_a_browser(built):
    playwright = _playwright()
    _, report, _ = built
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    page_html = Path(report["paths"]["html"]).read_text()
    embedded = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]+)"', page_html)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    requested = []
    with playwright.sync_playwright() as p:
        # launch() gives the browser a fresh temporary --user-data-dir of its own.
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            page.goto(Path(report["paths"]["html"]).as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(artifacts / "report.png"), full_page=True)
            images = page.eval_on_selector_all("img", """imgs => imgs.map(i => ({alt: i.alt, complete: i.complete,
                natural: [i.naturalWidth, i.naturalHeight], shown: [i.getBoundingClientRect().width,
                i.getBoundingClientRect().height], src: i.getAttribute("src").slice(0, 22)}))""")
            links = page.eval_on_selector_all("[src], [href]", "els => els.map(e => e.getAttribute('src') || e.getAttribute('href'))")
            text = page.inner_text("body")
        finally:
            browser.close()
    # Every plot the report embeds is in the page, decoded and drawn at a readable size.
    assert [i["alt"] for i in images] == embedded and len(embedded) >= 7, images
    assert {"learning curve", "F1 per class", "confusion matrix", "test errors by true class over rounds",
            "labels by source and class", "labels by source over rounds", "LLM cost over rounds"} <= set(embedded)
    for image in images:
        assert image["complete"] and image["src"] == "data:image/png;base64,", image
        assert min(image["natural"]) >= 200 and image["shown"][0] >= 200 and image["shown"][1] >= 150, image
    # Offline: nothing points outside the file, and the page asked for nothing but itself and its data URIs.
    assert not [link for link in links if re.match(EXTERNAL, link)], links
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page_html)
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert not re.search(r"Traceback|\bError\b|\bnan\b", text, re.IGNORECASE), text[:500]
