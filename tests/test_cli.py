"""The CLI as a user runs it: real subprocesses in a project folder."""

import json
import subprocess
import sys

from synthloop import simulate


def run(*args, cwd, check=True):
    proc = subprocess.run([sys.executable, "-m", "synthloop", *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_commands_end_to_end(tmp_path, small_pool):
    run("init", "proj", "--task", small_pool / "task.toml", "--batch-size", "10", cwd=tmp_path)
    proj = tmp_path / "proj"
    assert (proj / "synthloop.toml").is_file() and (proj / ".synthloop").is_dir()
    imported = json.loads(run("import", small_pool / "pool.csv", "--label-col", "label", "--gold", "--json", cwd=proj).stdout)
    assert imported["added"] > 250
    assert json.loads(run("import", small_pool / "pool.csv", "--label-col", "label", "--gold", "--json", cwd=proj).stdout)["added"] == 0
    run("import", small_pool / "test.csv", "--label-col", "label", "--split", "test", cwd=proj)

    trained = json.loads(run("train", "--json", cwd=proj).stdout)
    assert trained["model_version"] == 1 and 0 <= trained["metrics"]["accuracy"] <= 1
    queried = json.loads(run("query", "--json", cwd=proj).stdout)
    assert len(queried["queries"]) == 10
    assert json.loads(run("label", "--json", cwd=proj).stdout) == {"labels_added": 10, "pending": 0}
    # `label` closed round 0 (its queries came back), so `round` trains on them and selects anew.
    assert json.loads(run("round", "--json", cwd=proj).stdout)["number"] == 1
    rounds = json.loads(run("loop", "--rounds", "2", "--json", cwd=proj).stdout)
    assert [r["number"] for r in rounds] == [2, 3] and rounds[-1]["n_labels"] == 30

    status = json.loads(run("status", "--json", cwd=proj).stdout)
    assert sum(status["labels"]["oracle"].values()) == 40 and status["queries"] == {"labeled": 40}
    # The loop ended with a model (v6) trained and scored on all 40 labels, the last round's included.
    assert status["last_metrics"]["n_labels"] == 40 and status["last_metrics"]["model_version"] == 6
    table = run("status", cwd=proj).stdout
    assert "oracle" in table and "ham" in table and "accuracy" in table
    # Cost and impact: the first status timed model v6 and kept the figure; this one read it back.
    impact = status["impact"]
    assert impact["compact_model"]["model_version"] == 6 and impact["compact_model"]["seconds_per_1k_batched"] > 0
    assert impact["counterfactual"]["whole_pool"]["texts"] == imported["added"]
    assert "cost and impact" in table and "measured earlier" in table and "whole pool" in table

    [pred] = json.loads(run("predict", "Free entry! Text WIN to 80082 now", "--json", cwd=proj).stdout)
    assert pred["label"] in ("ham", "spam")
    preds = json.loads(run("predict", "--file", small_pool / "test.csv", "--json", cwd=proj).stdout)
    assert len(preds) > 190
    assert json.loads(run("export", tmp_path / "labeled.csv", "--json", cwd=proj).stdout)["rows"] == 40
    assert (tmp_path / "labeled.csv").read_text().startswith("id,text,label,source")


def test_errors_are_one_clear_line_and_exit_2(tmp_path, small_pool):
    proc = run("status", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "synthloop init" in proc.stderr and "Traceback" not in proc.stderr
    run("init", "p", "--task", small_pool / "task.toml", cwd=tmp_path)
    proc = run("import", "nope.csv", cwd=tmp_path / "p", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run("predict", "hello", cwd=tmp_path / "p", check=False)
    assert proc.returncode == 2 and "no model yet" in proc.stderr


def test_simulate_prints_the_json_contract(tmp_path, small_pool):
    proc = run("simulate", "--task", small_pool / "task.toml", "--pool", small_pool / "pool.csv",
               "--test", small_pool / "test.csv", "--strategy", "margin", "--model", "tfidf-lr",
               "--budget", "20", "--batch", "10", "--seed", "0", "--json", cwd=tmp_path)
    result = json.loads(proc.stdout)
    assert set(result) == {"curve", "seconds"} and [p["labels"] for p in result["curve"]] == [0, 10, 20]


def test_simulate_report_has_the_strategy_and_the_random_baseline(tmp_path, small_pool):
    base = ["simulate", "--task", small_pool / "task.toml", "--pool", small_pool / "pool.csv", "--test", small_pool / "test.csv",
            "--strategy", "margin", "--batch", "10", "--seed", "3"]
    args = [*base, "--budget", "20"]
    result = json.loads(run(*args, "--report", tmp_path / "rep", "--json", cwd=tmp_path).stdout)
    assert set(result) == {"curve", "seconds", "baselines", "report"}
    paths = {kind: tmp_path / "rep" / f"report.{kind}" for kind in ("html", "md", "json")}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    report = json.loads(paths["json"].read_text())
    labels = [p["labels"] for p in report["curve"]]
    assert labels == [p["labels"] for p in result["curve"]] == [0, 10, 20]
    assert [p["labels"] for p in report["baselines"]["random"]] == labels
    assert report["baselines"]["random"] == result["baselines"]["random"]
    assert all(0 <= p["accuracy"] <= 1 for p in report["curve"] + report["baselines"]["random"])
    assert report["summary"]["vs"]["random"]["accuracy_at_same_labels"] == report["baselines"]["random"][-1]["accuracy"]
    assert "margin vs random" in report["project"]
    assert "random: labels" in paths["md"].read_text() and "random: labels" in paths["html"].read_text()
    # The baseline is the plain random simulation with the same seed, not a different draw.
    plain = simulate(small_pool / "task.toml", small_pool / "pool.csv", small_pool / "test.csv", strategy="random",
                     budget=20, batch=10, seed=3)
    assert plain["curve"] == result["baselines"]["random"]

    # `--report` without a folder writes ./simulation-report; a folder without --report is refused.
    text = run(*base, "--budget", "10", "--report", cwd=tmp_path).stdout
    assert "random accuracy" in text and (tmp_path / "simulation-report" / "report.html").is_file()
    proc = run(*args, tmp_path / "elsewhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "add --report" in proc.stderr and not (tmp_path / "elsewhere").exists()
