"""The CLI as a user runs it: real subprocesses in a project folder."""

import json

import pandas as pd
import pytest
from forkserver import run_synthloop

from synthloop import simulate

# For tests of the CLI itself, not of the model: tfidf-lr embeds nothing (test_commands_end_to_end runs the default).
TFIDF = ("--model", "tfidf-lr")


def run(*args, cwd, check=True):
    proc = run_synthloop(*args, cwd=cwd)
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
    tested = json.loads(run("import", small_pool / "test.csv", "--label-col", "label", "--split", "test", "--json", cwd=proj).stdout)

    trained = json.loads(run("train", "--json", cwd=proj).stdout)
    # Scored on every test row stored (those already in the pool stay pool rows, not test rows).
    assert trained["model_version"] == 1 and trained["metrics"]["n_test"] == tested["added"] == 200 - tested["other_split"]
    # A plain `train` keeps its metrics with the model version, so status shows them before any round.
    shown = json.loads(run("status", "--json", cwd=proj).stdout)["last_metrics"]
    assert shown["model_version"] == 1 and shown["accuracy"] == trained["metrics"]["accuracy"]
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
    assert len(preds) == 200 and {p["model_version"] for p in preds} == {6}
    # The metrics status shows are the predictions' accuracy on the stored test rows.
    test, pool_texts = pd.read_csv(small_pool / "test.csv"), set(pd.read_csv(small_pool / "pool.csv").text)
    right = [p["label"] == gold for p, gold, text in zip(preds, test.label, test.text) if text not in pool_texts]
    assert len(right) == tested["added"] and status["last_metrics"]["accuracy"] == pytest.approx(sum(right) / len(right))
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
    # The commands in their own cli_*.py files go through the same handler (cli_common.cli_command).
    for args, words in ((("llm", "install", "nope"), "unknown model 'nope'"),
                        (("llm", "serve", "--model", tmp_path / "no.gguf"), "no model file at"),
                        (("requeue", "--failed"), "synthloop init"),
                        (("export-model", tmp_path / "out"), "no model yet")):
        proc = run(*args, cwd=tmp_path / ("p" if args[0] == "export-model" else ""), check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, proc.stderr)


def test_simulate_prints_the_json_contract(tmp_path, small_pool):
    proc = run("simulate", "--task", small_pool / "task.toml", "--pool", small_pool / "pool.csv",
               "--test", small_pool / "test.csv", "--strategy", "margin", "--model", "tfidf-lr",
               "--budget", "20", "--batch", "10", "--seed", "0", "--json", cwd=tmp_path)
    result = json.loads(proc.stdout)
    assert set(result) == {"curve", "seconds"} and [p["labels"] for p in result["curve"]] == [0, 10, 20]


def test_simulate_report_has_the_strategy_and_the_random_baseline(tmp_path, small_pool):
    base = ["simulate", "--task", small_pool / "task.toml", "--pool", small_pool / "pool.csv", "--test", small_pool / "test.csv",
            "--strategy", "margin", "--batch", "10", "--seed", "3", *TFIDF]
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
    # The report shows the run's own points (with their round number), accuracies included.
    assert [{k: p[k] for k in ("labels", "accuracy", "macro_f1")} for p in report["curve"]] == result["curve"]
    assert report["summary"]["vs"]["random"]["accuracy_at_same_labels"] == report["baselines"]["random"][-1]["accuracy"]
    assert "margin vs random" in report["project"]
    assert "random: labels" in paths["md"].read_text() and "random: labels" in paths["html"].read_text()
    # The baseline is the plain random simulation with the same seed, not a different draw.
    plain = simulate(small_pool / "task.toml", small_pool / "pool.csv", small_pool / "test.csv", strategy="random",
                     model="tfidf-lr", budget=20, batch=10, seed=3)
    assert plain["curve"] == result["baselines"]["random"]

    # `--report` without a folder writes ./simulation-report; a folder without --report is refused.
    text = run(*base, "--budget", "10", "--report", cwd=tmp_path).stdout
    assert "random accuracy" in text and (tmp_path / "simulation-report" / "report.html").is_file()
    proc = run(*args, tmp_path / "elsewhere", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "add --report" in proc.stderr and not (tmp_path / "elsewhere").exists()


MARKUP_TEXTS = ["[/bold] win a prize", "[link=http://evil.example]click here[/link] now", "[/] hello", "[red]free[/red] cash"]


def test_user_text_is_printed_as_text_never_as_markup(tmp_path, small_pool):
    import csv

    run("init", "p", "--task", small_pool / "task.toml", *TFIDF, "--batch-size", "5", cwd=tmp_path)
    proj = tmp_path / "p"
    pool = tmp_path / "markup.csv"
    with open(pool, "w", newline="") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in MARKUP_TEXTS]])
    run("import", small_pool / "pool.csv", "--label-col", "label", cwd=proj)
    run("import", pool, cwd=proj)
    wide = {"COLUMNS": "300"}
    # Every pool text is queried (n above the pool size), so the table prints each markup text.
    queried = run_synthloop("query", "--n", "1000", cwd=proj, env={**__import__("os").environ, **wide})
    assert queried.returncode == 0, queried.stderr
    for text in MARKUP_TEXTS:
        assert text in queried.stdout, text
    assert "\x1b]8;" not in queried.stdout  # no terminal hyperlink escape
    predicted = run_synthloop("predict", *MARKUP_TEXTS, cwd=proj, env={**__import__("os").environ, **wide})
    assert predicted.returncode == 0, predicted.stderr
    assert all(text in predicted.stdout for text in MARKUP_TEXTS)


def test_predict_takes_texts_a_file_or_stdin_and_refuses_a_bare_file_name(tmp_path, small_pool):
    run("init", "p", "--task", small_pool / "task.toml", *TFIDF, cwd=tmp_path)
    proj = tmp_path / "p"
    run("import", small_pool / "pool.csv", "--label-col", "label", cwd=proj)
    run("train", cwd=proj)
    assert len(json.loads(run("predict", "win cash", "see you at 5", "--json", cwd=proj).stdout)) == 2
    (tmp_path / "texts.txt").write_text("win cash\n\nsee you\nhello\n")
    assert len(json.loads(run("predict", "--file", tmp_path / "texts.txt", "--json", cwd=proj).stdout)) == 3
    piped = run_synthloop("predict", "-", "--json", cwd=proj, input="a\nb\n")
    assert [r["text"] for r in json.loads(piped.stdout)] == ["a", "b"]
    bare = run("predict", "nothere.csv", cwd=proj, check=False)
    assert bare.returncode == 2 and "--file nothere.csv" in bare.stderr
    missing = run("predict", "--file", "nothere.csv", cwd=proj, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_bad_values_and_damaged_files_are_one_line_and_exit_2(tmp_path, small_pool):
    proc = run("init", "p0", "--task", small_pool / "task.toml", "--batch-size", "0", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    run("init", "p", "--task", small_pool / "task.toml", *TFIDF, "--batch-size", "5", cwd=tmp_path)
    proj = tmp_path / "p"
    run("import", small_pool / "pool.csv", "--label-col", "label", cwd=proj)
    run("round", cwd=proj)
    for args in (["query", "--n", "-5"], ["loop", "--rounds", "-3"], ["export", tmp_path / "no" / "such" / "x.csv"]):
        proc = run(*args, cwd=proj, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
    proc = run("simulate", "--task", small_pool / "task.toml", "--pool", small_pool / "pool.csv", "--test",
               small_pool / "test.csv", "--budget", "-5", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    model = sorted((proj / ".synthloop" / "models").glob("v*.joblib"))[-1]
    model.write_bytes(model.read_bytes()[:200])
    proc = run("predict", "hello", cwd=proj, check=False)
    assert proc.returncode == 2 and "is damaged" in proc.stderr and "synthloop train" in proc.stderr
    db = proj / ".synthloop" / "store.db"
    for junk in (db.read_bytes()[:4096], b"\x13" * 5000):
        for extra in (".synthloop/store.db-wal", ".synthloop/store.db-shm"):
            (proj / extra).unlink(missing_ok=True)
        db.write_bytes(junk)
        proc = run("status", cwd=proj, check=False)
        assert proc.returncode == 2 and "is damaged" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    db.write_bytes(b"")
    proc = run("status", cwd=proj, check=False)
    assert proc.returncode == 2 and "empty (0 bytes)" in proc.stderr
    import shutil

    shutil.rmtree(proj / ".synthloop")
    proc = run("status", cwd=proj, check=False)
    assert proc.returncode == 2 and "is missing" in proc.stderr


def test_a_bug_prints_one_line_and_where_the_traceback_is(tmp_path, small_pool):
    (tmp_path / "buggy_strategy.py").write_text("def pick(classifier, X, n_instances=1, **kw):\n    return 1 / 0\n")
    run("init", "p", "--task", small_pool / "task.toml", *TFIDF, cwd=tmp_path)
    proj = tmp_path / "p"
    run("import", small_pool / "pool.csv", "--label-col", "label", "--gold", cwd=proj)
    env = {**__import__("os").environ}
    env["PYTHONPATH"] = f"{tmp_path}:{env.get('PYTHONPATH', '')}"
    proc = run_synthloop("query", "--strategy", "buggy_strategy.pick", cwd=proj, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "selecting" not in line]
    assert len(lines) == 1 and "ZeroDivisionError" in lines[0] and "errors.log" in lines[0], proc.stderr
    log = (proj / ".synthloop" / "logs" / "errors.log").read_text()
    assert "Traceback" in log and "buggy_strategy.py" in log


def test_report_markdown_escapes_html_and_links_in_user_text():
    from synthloop.report.plots import to_markdown

    evil = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">', "[click](javascript:alert(3))"]
    md = to_markdown([("h2", evil[0]), ("p", f"label {evil[1]} in `synthloop round`"),
                      ("table", ["label", "text"], [[evil[0], evil[2]], ["a|b", evil[1]]])], title=evil[1])
    assert "<script" not in md and "<img" not in md and "](javascript:" not in md
    assert "&lt;script&gt;" in md and "&lt;img src=x onerror=" in md and "`synthloop round`" in md
    assert "a\\|b" in md  # a pipe in a cell does not split the table


def test_library_warnings_go_to_the_log_not_the_terminal(tmp_path, small_pool):
    (tmp_path / "noisy_strategy.py").write_text(
        "import warnings\n\ndef pick(classifier, X, n_instances=1, **kw):\n"
        "    warnings.warn('the number of unique classes is greater than 50%', UserWarning)\n"
        "    return list(range(n_instances))\n")
    run("init", "p", "--task", small_pool / "task.toml", *TFIDF, "--batch-size", "3", cwd=tmp_path)
    proj = tmp_path / "p"
    run("import", small_pool / "pool.csv", "--label-col", "label", "--gold", cwd=proj)
    env = {**__import__("os").environ}
    env["PYTHONPATH"] = f"{tmp_path}:{env.get('PYTHONPATH', '')}"
    proc = run_synthloop("query", "--strategy", "noisy_strategy.pick", "--json", cwd=proj, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["queries"]) == 3
    assert "unique classes" not in proc.stderr
    assert "unique classes" in (proj / ".synthloop" / "logs" / "errors.log").read_text()
