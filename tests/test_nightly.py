"""The nightly job: only new work on a second run, the lock, kill -9 and re-run, budgets, dry run."""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pandas as pd
import pytest
from llm_servers import FaultServer, completion

from synthloop import Project, SynthloopError
from synthloop.llm.quoting import unquote
from synthloop.loop.nightly import run_nightly


@pytest.fixture
def nightly_project(project, small_pool, example_dir, tmp_path):
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    pool = pd.read_csv(example_dir / "pool.csv")
    pool.iloc[300:400][["text"]].to_csv(incoming / "day1.csv", index=False)
    project.extra = pool.iloc[400:450][["text"]]
    return project, incoming


def new_count(project, texts) -> int:
    from synthloop.data import example_id

    ids = {example_id(t.strip()) for t in texts}
    return len(ids - set(project.store.existing_ids(ids)))


def test_second_run_only_does_new_work(nightly_project, monkeypatch):
    from synthloop.learn import selection

    project, incoming = nightly_project
    expected = new_count(project, pd.read_csv(incoming / "day1.csv").text)
    first = run_nightly(project, str(incoming), max_labels=10)
    assert first["new_files"] == 1 and first["imported"] == expected > 90 and first["retrained"] and first["queried"] == 10
    unlabeled, _ = project.store.unlabeled_pool()
    assert first["scored"] == len(unlabeled) + 10  # everything was new

    # From now on every answer is off the task's labels (failed queries), so no new label changes the model.
    server = FaultServer()
    server.reset(("content", '{"label": "eggs", "confidence": 0.9}'))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    project.config.llm.base_url, project.config.llm.max_retries = server.base_url, 0
    project.config.llm.response_format = "json_object_schema"
    # A re-score bounded well below the pool: the old model's 20 most uncertain and a random 30 others.
    monkeypatch.setattr(selection, "RESCORE_TOP", 20)
    monkeypatch.setattr(selection, "RESCORE_SLICE", 30)
    old = project.store.cached_scores(first["model_version"], "margin")
    old_top = sorted(unlabeled, key=lambda i: (-old[i], i))[:20]
    try:
        second = run_nightly(project, str(incoming), max_labels=5, labeler="llm")
        assert second["new_files"] == 0 and second["retrained"] and second["queried"] == 5
        # The model changed: its candidates were re-scored, not the whole pool.
        assert second["scored"] == 20 + 30 < len(unlabeled)
        rescored = project.store.cached_scores(second["model_version"], "margin")
        assert len(rescored) == 50 and set(old_top) <= set(rescored)

        third = run_nightly(project, str(incoming), max_labels=5, labeler="llm")
        assert third["new_files"] == 0 and not third["retrained"] and third["scored"] == 0 and third["queried"] == 5
        assert third["model_version"] == second["model_version"]

        project.extra.to_csv(incoming / "day2.csv", index=False)
        expected = new_count(project, project.extra.text)
        fourth = run_nightly(project, str(incoming), max_labels=5, labeler="llm")
        assert fourth["new_files"] == 1 and fourth["imported"] == expected > 40 and not fourth["retrained"]
        assert fourth["scored"] == expected and fourth["queried"] == 5  # only the new examples were scored
    finally:
        server.stop()
    runs = project.store.runs("nightly")
    assert [r.status for r in runs] == ["done"] * 4
    assert (project.state_dir / "reports" / "nightly-0004.md").read_text().startswith("# Nightly run 4")
    assert "run 4 done" in (project.state_dir / "logs" / "nightly.log").read_text()


def test_dry_run_changes_nothing(nightly_project):
    from typer.testing import CliRunner

    from synthloop.cli.main import app

    project, incoming = nightly_project
    before = project.store.count_examples()
    plan = run_nightly(project, str(incoming), dry_run=True)
    assert plan["dry_run"] and len(plan["new_files"]) == 1 and plan["retrain"] and plan["select"] == 10
    result = CliRunner().invoke(app, ["nightly", "--project", str(project.root), "--pool", str(incoming), "--dry-run",
                                      "--max-labels", "30", "--max-cost", "2", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["dry_run"] and shown["new_files"] == plan["new_files"] and shown["select"] == 30
    assert shown["budget_left"] == 2
    assert project.store.count_examples() == before and project.store.runs() == [] and project.store.rounds() == []
    assert project.store.queries() == [] and project.store.pool_file(plan["new_files"][0]) is None


def nightly_cli(root, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "synthloop", "nightly", *args], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("step", ["imported", "collected", "trained", "augmented", "selected", "routed", "reported"])
def test_lock_then_kill_9_then_rerun(nightly_project, step):
    project, incoming = nightly_project
    root = project.root
    first = nightly_cli(root, "--pool", str(incoming), env={"SYNTHLOOP_PAUSE_AT": step})
    line = first.stdout.readline()
    assert line.startswith(f"PAUSED {step}"), line + first.stderr.read()

    second = nightly_cli(root, "--pool", str(incoming))
    _, err = second.communicate(timeout=60)
    assert second.returncode == 75 and "another synthloop run holds" in err

    first.send_signal(signal.SIGKILL)
    first.wait()
    again = nightly_cli(root, "--pool", str(incoming), "--json")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    summary = json.loads(out)
    assert summary["imported"] == 0  # the killed run had imported the file already
    reopened = Project(root)
    queries = reopened.store.queries()
    assert len(queries) == len({q.example_id for q in queries}) and {q.status for q in queries} <= {"labeled", "skipped"}
    assert [r.status for r in reopened.store.runs("nightly")] == ["killed", "done"]
    assert reopened.store.pool_file(str((incoming / "day1.csv").resolve())) is not None
    if step == "reported":  # the killed night had finished its round: the re-run is a night of its own
        assert summary["round"] == 1 and len(queries) == 20
        return
    # The re-run finished the killed run's round: 10 queries (selected by it, or by the re-run when the kill
    # came before selecting), handed out once, none selected twice.
    assert len(queries) == 10 and summary["queried"] == 10 and summary["round"] == 0


def test_llm_budget_stops_before_it_is_exceeded(nightly_project, monkeypatch):
    from synthloop.labelers.llm import estimated_cost, few_shot_examples, labeling_messages

    project, incoming = nightly_project
    server = FaultServer()
    server.reset(("content", '{"label": "spam", "confidence": 0.9}'))
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        project.config.llm.base_url = server.base_url
        project.config.llm.model = "gpt-4o"
        project.config.llm.response_format = "json_object_schema"
        ids, texts = project.store.unlabeled_pool()
        shots = few_shot_examples(project.store, project.task, project.config.llm.few_shot)
        budget = 3.5 * max(estimated_cost(project.config.llm, labeling_messages(project.task, t, shots)) for t in texts)
        summary = run_nightly(project, None, max_labels=10, max_cost=budget, labeler="llm")
        assert summary["queried"] == 10
        # What the guard should have allowed: queries in order while their estimates fit the budget.
        costs = [estimated_cost(project.config.llm, labeling_messages(project.task, q.text, shots)) for q in project.store.queries()]
        allowed = next(k for k in range(len(costs) + 1) if k == len(costs) or sum(costs[:k + 1]) > budget)
        assert 3 <= allowed < 10
        labeled = [r for r in project.store.training_set() if r[3].startswith("llm:")]
        assert len(labeled) == allowed and len(server.requests) == allowed
        assert summary["pending"] == 10 - allowed and 0 < summary["llm_cost"] <= budget
    finally:
        server.stop()


def test_max_labels_is_tonights_selection_size(nightly_project):
    project, incoming = nightly_project
    assert project.config.loop.batch_size == 10
    assert run_nightly(project, str(incoming), max_labels=3)["queried"] == 3
    assert run_nightly(project, str(incoming), max_labels=25)["queried"] == 25  # not stopped at batch_size
    assert run_nightly(project, str(incoming))["queried"] == 10  # no cap: one batch_size


@pytest.fixture
def llm_server(nightly_project, monkeypatch):
    """A fault server that labels everything spam, with the nightly project's LLM pointed at it."""
    project, _ = nightly_project
    server = FaultServer()
    server.reset(("content", '{"label": "spam", "confidence": 0.9}'))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = project.config.llm
    cfg.base_url, cfg.model, cfg.response_format = server.base_url, "gpt-4o", "json_object_schema"
    yield server
    server.stop()


def test_max_labels_caps_what_goes_out_tonight_leftovers_included(nightly_project, llm_server):
    from synthloop.loop.nightly import HELD

    project, _ = nightly_project
    night1 = run_nightly(project, None, max_labels=10, max_cost=0, labeler="llm")  # nothing fits: all left over
    assert night1["queried"] == 10 and night1["pending"] == 10 and llm_server.requests == []

    # The cap is below the leftovers: the 4 oldest go out, none is selected, the other 6 wait.
    night2 = run_nightly(project, None, max_labels=4, labeler="llm")
    assert (night2["carried_over"], night2["held_back"], night2["queried"]) == (4, 6, 0)
    assert len(llm_server.requests) == 4 and night2["labels_collected"] == 4 and night2["pending"] == 6
    round0 = project.store.queries(round_=0)
    assert [q.status for q in round0] == ["labeled"] * 4 + ["pending"] * 6  # oldest first
    assert HELD not in project.store.query_counts()  # released when the run ended

    # A run killed while holding leaves them held: the next run releases them before it counts anything.
    project.store.hold([q.example_id for q in round0[4:]])
    assert run_nightly(project, None, max_labels=10, dry_run=True)["carried_over"] == 6
    night3 = run_nightly(project, None, max_labels=10, labeler="llm")
    assert (night3["carried_over"], night3["held_back"], night3["queried"]) == (6, 0, 4)
    assert len(llm_server.requests) == 4 + 10 and night3["labels_collected"] == 10 and night3["pending"] == 0


def test_the_budget_covers_the_night_across_a_failed_run(nightly_project, batch_server, monkeypatch):
    import synthloop.loop.nightly as nightly_module
    from synthloop.labelers.llm import estimated_cost, few_shot_examples, labeling_messages
    from synthloop.llm.pricing import BATCH_DISCOUNT

    server = batch_server
    project, _ = nightly_project
    _, texts = project.store.unlabeled_pool()
    shots = few_shot_examples(project.store, project.task, project.config.llm.few_shot)
    budget = 3.5 * max(estimated_cost(project.config.llm, labeling_messages(project.task, t, shots)) for t in texts) * BATCH_DISCOUNT

    def report_fails(*args):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(nightly_module, "write_report", report_fails)  # the run fails after it has submitted
        with pytest.raises(OSError, match="disk full"):
            run_nightly(project, None, max_labels=10, max_cost=budget, labeler="llm-batch")
    (job,) = server.batches.values()
    committed = project.store.jobs("llm-batch")[job["id"]].estimated_cost
    allowed = len(custom_ids(server, job["id"]))
    assert 3 <= allowed < 10 and committed <= budget
    assert [(r.status, r.summary["exit_status"]) for r in project.store.runs("nightly")] == [("failed", 1)]

    # The re-run is the same night: it gets what is left, which covers no more query, not the budget again.
    again = run_nightly(project, None, max_labels=10, max_cost=budget, labeler="llm-batch")
    assert again["carried_over"] == 10 - allowed and again["batch"]["submitted"] == 0 and len(server.batches) == 1
    assert again["night_cost"] == pytest.approx(committed, abs=1e-6)  # the summary rounds to 6 decimals
    assert again["budget_left"] == pytest.approx(budget - committed, abs=1e-6)
    assert again["labels_collected"] == allowed  # the answers came in; their cost was counted when submitted

    # That run finished: the next one is a new night, with the whole budget.
    night2 = run_nightly(project, None, max_labels=10, max_cost=budget, labeler="llm-batch")
    assert 3 <= night2["batch"]["submitted"] < 10 and len(server.batches) == 2
    assert night2["night_cost"] == pytest.approx(night2["batch"]["estimated_cost"], abs=1e-6)
    assert 0 < night2["night_cost"] <= budget
    assert [r.status for r in project.store.runs("nightly")] == ["failed", "done", "done"]


def test_topup_waits_when_the_night_budget_is_spent(nightly_project, monkeypatch):
    import synthloop.synth as synth_module

    project, _ = nightly_project
    labeled = project.root / "ham.csv"  # real labels all of one class: spam is short, whatever the oracle adds
    pd.DataFrame({"text": [f"lunch at noon with the team, day {i}" for i in range(20)], "label": "ham"}).to_csv(labeled, index=False)
    project.import_file(labeled, label_col="label")
    project.config.synth.topup = True
    calls = []
    monkeypatch.setattr(synth_module, "generate", lambda *args, **kwargs: calls.append(args))
    run_nightly(project, None, max_labels=5, max_cost=0)
    assert calls == []  # spam is short, but $0 is left tonight
    run_nightly(project, None, max_labels=5)
    assert len(calls) == 1  # no cap: the top-up runs


# Exit statuses a scheduler acts on; the CLI end to end -----------------------------------------------------

def test_exit_status_tells_a_server_down_from_bad_input():
    import httpx
    import openai

    from synthloop.labelers.argilla import ArgillaUnreachable
    from synthloop.learn.scale_ray import RayUnreachable
    from synthloop.loop.nightly import Locked, Unavailable, exit_status

    def raised_while(handling: Exception, error: Exception) -> Exception:
        try:
            try:
                raise handling
            except Exception:
                raise error from None  # as the clients do: the context stays, the traceback hides it
        except Exception as err:
            return err

    request = httpx.Request("GET", "http://127.0.0.1:9/")
    assert exit_status(ArgillaUnreachable("http://x", "push", 3, "ConnectError")) == 69
    assert exit_status(RayUnreachable("no head")) == exit_status(Unavailable("down")) == 69
    assert exit_status(openai.APIConnectionError(request=request)) == 69
    assert exit_status(openai.APITimeoutError(request=request)) == 69
    assert exit_status(raised_while(httpx.ConnectError("refused"), SynthloopError("server gone"))) == 69
    assert exit_status(ConnectionRefusedError()) == exit_status(TimeoutError()) == 69
    assert exit_status(SynthloopError("no column 'text'; pass --text-col")) == 2
    assert exit_status(raised_while(KeyError("x"), SynthloopError("bad config"))) == 2
    assert exit_status(RuntimeError("a bug")) == 1 and exit_status(Locked("busy")) == 75


def test_cli_exits_69_when_the_llm_is_down_and_records_the_failed_run(nightly_project, tmp_path):
    project, incoming = nightly_project
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "logs" / "tonight.log"
    down = nightly_cli(project.root, "--pool", str(incoming), "--labeler", "llm", "--log-file", str(log),
                       env={"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "sk-test"})
    _, err = down.communicate(timeout=120)
    assert down.returncode == 69, err
    assert f"unavailable: the LLM API at http://127.0.0.1:{port}/v1 does not answer" in " ".join(err.split())
    reopened = Project(project.root)
    (run,) = reopened.store.runs("nightly")
    assert run.status == "failed" and run.summary["exit_status"] == 69 and "does not answer" in run.summary["error"]
    # Before anything was done: no file imported, no query marked failed.
    assert reopened.store.pool_file(str((incoming / "day1.csv").resolve())) is None and reopened.store.queries() == []
    text = log.read_text()
    assert "run 1 failed (exit status 69)" in text and "Unavailable" in text
    assert not (project.state_dir / "logs" / "nightly.log").exists()  # --log-file, not the default
    reopened.close()


def test_cli_exits_1_on_an_unexpected_error_with_the_traceback_in_the_log(nightly_project, monkeypatch):
    from typer.testing import CliRunner

    from synthloop.cli.main import app

    project, incoming = nightly_project

    def broken_round(self, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(Project, "round", broken_round)
    result = CliRunner().invoke(app, ["nightly", "--project", str(project.root), "--pool", str(incoming)])
    assert result.exit_code == 1 and "failed: ZeroDivisionError: a bug" in result.output + (result.stderr or "")
    (run,) = project.store.runs("nightly")
    assert run.status == "failed" and run.summary == {"error": "a bug", "exit_status": 1}
    text = (project.state_dir / "logs" / "nightly.log").read_text()
    assert "run 1 failed (exit status 1)" in text and "Traceback" in text and "broken_round" in text


def test_cli_twice_in_a_row_the_second_run_only_does_new_work(nightly_project):
    project, incoming = nightly_project
    runs = []
    for _ in range(2):
        proc = nightly_cli(project.root, "--pool", str(incoming), "--max-labels", "10", "--json")
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        runs.append(json.loads(out))
    first, second = runs
    assert first["new_files"] == 1 and first["imported"] > 90 and first["queried"] == 10 and first["round"] == 0
    assert second["new_files"] == 0 and second["imported"] == 0  # the file is not imported again
    assert second["round"] == 1 and second["queried"] == 10
    reopened = Project(project.root)
    queries = reopened.store.queries()
    assert len(queries) == len({q.example_id for q in queries}) == 20  # nothing asked twice
    assert [r.status for r in reopened.store.runs("nightly")] == ["done", "done"]
    assert (reopened.state_dir / "reports" / "nightly-0002.json").is_file()
    reopened.close()


# Scoring through synthloop.learn.scale: --engine local | ray ------------------------------------------------

def twin_of(project, folder) -> Project:
    """An exact copy of the project, store included, to run the same night twice."""
    project.store.engine.dispose()  # the last connection closing checkpoints the WAL into store.db
    shutil.copytree(project.root, folder)
    return Project(folder)


def picks(project) -> list[tuple[str, float]]:
    return [(q.example_id, q.score) for q in project.store.queries()]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, about its DataContext defaults
def test_engines_local_and_ray_select_the_same_ids(nightly_project, ray_cluster, monkeypatch, tmp_path):
    import synthloop.loop.training as training_module
    from synthloop.learn import measures

    project, incoming = nightly_project
    monkeypatch.setattr(training_module, "SCORE_CHUNK_SIZE", 64)  # several chunks: several workers' results merged
    twin = twin_of(project, tmp_path / "twin")
    try:
        local = run_nightly(project, str(incoming), max_labels=10, engine="local")
        on_ray = run_nightly(twin, str(incoming), max_labels=10, engine="ray", address=ray_cluster)
        assert local["engine"] == "local" and on_ray["engine"] == "ray"
        assert local["model_version"] == on_ray["model_version"] and local["metrics"] == on_ray["metrics"]
        unlabeled = len(project.store.unlabeled_pool()[0])
        assert local["queried"] == on_ray["queried"] == 10 and local["scored"] == on_ray["scored"] == unlabeled + 10
        assert [i for i, _ in picks(project)] == [i for i, _ in picks(twin)]
        assert [s for _, s in picks(project)] == pytest.approx([s for _, s in picks(twin)], abs=1e-12)

        # The streamed choice is the top 10 of the whole pool by the in-memory margin.
        _, model = project.load_model(local["model_version"])
        ids, texts = project.store.unlabeled_pool()
        chosen = project.store.queries()
        ids, texts = ids + [q.example_id for q in chosen], texts + [q.text for q in chosen]
        margin = measures.uncertainty("margin", model.predict_proba(texts))
        best = sorted(range(len(ids)), key=lambda i: (-margin[i], ids[i]))[:10]
        assert {ids[i] for i in best} == {q.example_id for q in chosen}

        # ranked-batch: the few thousand most uncertain streamed, then the diversity step on those.
        for proj in (project, twin):
            proj.config.loop.strategy = "ranked-batch"
        local = run_nightly(project, str(incoming), max_labels=10, engine="local")
        on_ray = run_nightly(twin, str(incoming), max_labels=10, engine="ray", address=ray_cluster)
        assert local["retrained"] and local["model_version"] == on_ray["model_version"]
        assert local["queried"] == on_ray["queried"] == 10
        assert [i for i, _ in picks(project)] == [i for i, _ in picks(twin)]
        assert {q.strategy for q in project.store.queries(round_=1)} == {"ranked-batch"}
    finally:
        twin.close()


def test_bad_engine_options_are_refused_before_any_work(nightly_project):
    from typer.testing import CliRunner

    from synthloop.cli.main import app

    project, incoming = nightly_project
    cases = [(["--engine", "spark"], "unknown engine 'spark'; choose --engine local"),
             (["--address", "10.0.0.5:6379"], "add --engine ray"),
             (["--engine", "local", "--address", "10.0.0.5:6379"], "--address is for --engine ray"),
             (["--labeler", "llm-bach"], "unknown labeler 'llm-bach'; choose --labeler one of")]
    if importlib.util.find_spec("ray") is not None or os.environ.get("CI"):  # under CI a missing Ray fails
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # A cluster that does not answer is "try again later" to a scheduler, not a bad option.
        cases.append((["--engine", "ray", "--address", f"127.0.0.1:{port}"],
                      f"unavailable: cannot reach a Ray cluster at '127.0.0.1:{port}'", 69))
    cases += [(["--max-labels", "-1"], "--max-labels is -1; give 0 or more"), (["--max-cost", "-0.5"], "--max-cost is -0.5")]
    for args, message, *status in cases:
        result = CliRunner().invoke(app, ["nightly", "--project", str(project.root), "--pool", str(incoming), *args])
        assert result.exit_code == (status[0] if status else 2), result.output
        assert message in " ".join((result.output + (result.stderr or "")).split()), args
    # A --pool that names nothing is a typo, not a quiet night; an empty glob in a folder that exists is one.
    result = CliRunner().invoke(app, ["nightly", "--project", str(project.root), "--pool", str(incoming) + "s"])
    assert result.exit_code == 2 and "no such file or folder" in " ".join((result.output + (result.stderr or "")).split())
    assert run_nightly(project, str(incoming / "*.parquet"), dry_run=True)["new_files"] == []
    project.config.loop.strategy = "random"
    with pytest.raises(SynthloopError, match=r"cannot be streamed by --engine; set \[loop\] strategy"):
        run_nightly(project, str(incoming), engine="local")
    assert project.store.runs() == [] and project.store.pool_file(str((incoming / "day1.csv").resolve())) is None


def test_store_streams_the_unlabeled_pool_in_id_order(nightly_project):
    project, _ = nightly_project
    run_nightly(project, None, max_labels=10)  # labels and queries: both must be left out
    ids, texts = project.store.unlabeled_pool()
    for size in (1, 7, len(ids), len(ids) + 5):
        chunks = list(project.store.unlabeled_pool_chunks(size))
        assert [i for c, _ in chunks for i in c] == ids and [t for _, c in chunks for t in c] == texts
        assert all(len(c) <= size for c, _ in chunks)
    assert not set(ids) & {q.example_id for q in project.store.queries()}


# The Batch API route: one night submits, the next collects --------------------------------------------

@pytest.fixture
def batch_server(nightly_project, monkeypatch):
    """The local files/batches server, with the nightly project's LLM pointed at it."""
    project, _ = nightly_project
    server = FaultServer()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = project.config.llm
    cfg.base_url, cfg.model, cfg.response_format, cfg.max_retries = server.base_url, "gpt-4o", "json_schema", 0
    server.batch_answer = lambda body: completion('{"label": "ham", "confidence": 0.7}')
    yield server
    server.stop()


def custom_ids(server, batch_id) -> list[str]:
    lines = server.files[server.batches[batch_id]["input_file_id"]].decode().splitlines()
    return [json.loads(line)["custom_id"] for line in lines]


def test_batch_route_night_one_submits_night_two_collects(nightly_project, batch_server):
    from synthloop.labelers import get_labeler
    from synthloop.labelers.batch import jobs
    from synthloop.llm.pricing import cost_usd

    server = batch_server
    project, incoming = nightly_project
    night1 = run_nightly(project, str(incoming), max_labels=10, labeler="llm-batch")
    assert night1["queried"] == 10 and night1["labels_collected"] == 0 and night1["pending"] == 10
    assert night1["batch"]["submitted"] == 10 and night1["batch"]["open_jobs"] == 1 and night1["batch"]["estimated_cost"] > 0
    assert list(server.batches) == ["batch-0"] and server.batches["batch-0"]["polls"] == 1  # polled, not waited on
    round0 = project.store.queries(round_=0)
    assert custom_ids(server, "batch-0") == [q.example_id for q in round0]
    assert jobs(project.store)["batch-0"].status == "open" and server.requests == []  # no direct LLM call
    body = json.loads(server.files["file-0"].decode().splitlines()[0])["body"]
    assert body["model"] == "gpt-4o" and body["response_format"]["type"] == "json_schema" and body["logprobs"]

    # A killed run resumed hands the same queries out again: nothing is submitted twice.
    assert get_labeler("llm-batch", project.label_context()).submit(round0).ids == []
    assert list(server.batches) == ["batch-0"]

    # The answers, decided when the job finishes: one off the task, one abstention, the rest labels.
    texts = {q.text: q.example_id for q in round0}
    odd, shy = round0[0].example_id, round0[1].example_id

    def answer(body):
        eid = texts.get(unquote(body["messages"][-1]["content"]))
        if eid == odd:
            return completion('{"label": "eggs", "confidence": 0.9}')
        if eid == shy:
            return completion('{"label": "abstain", "confidence": 0.2}')
        return completion('{"label": "spam", "confidence": 0.8}', logprobs=True)

    server.batch_answer = answer
    night2 = run_nightly(project, str(incoming), max_labels=10, labeler="llm-batch")
    assert night2["labels_collected"] == 8 and night2["retrained"] and night2["round"] == 1
    assert night2["queried"] == 10 and night2["batch"]["submitted"] == 10 and night2["batch"]["open_jobs"] == 1
    assert list(server.batches) == ["batch-0", "batch-1"]
    assert custom_ids(server, "batch-1") == [q.example_id for q in project.store.queries(round_=1)]
    statuses = {q.example_id: q.status for q in project.store.queries(round_=0)}
    assert statuses.pop(odd) == "failed" and statuses.pop(shy) == "skipped" and set(statuses.values()) == {"labeled"}
    half = cost_usd("gpt-4o", 20, 5) / 2  # the fault server's usage per answer, at batch price
    labels = [r for r in project.store.training_set() if r.source == "llm:gpt-4o"]
    assert len(labels) == 8 and {r.label for r in labels} == {"spam"}
    usage = {(u.purpose, u.model): u for u in project.store.llm_usage()}
    assert usage[("label-batch", "gpt-4o")].calls == 10 and usage[("label-batch", "gpt-4o")].failed == 1
    assert night2["llm_cost"] == pytest.approx(10 * half)
    states = {k: j.status for k, j in jobs(project.store, states=("open", "answered", "done")).items()}
    assert states == {"batch-0": "done", "batch-1": "open"}
    assert "Batch API: 10 queries submitted" in (project.state_dir / "reports" / "nightly-0002.md").read_text()


def test_batch_submissions_stay_within_the_nightly_budget(nightly_project, batch_server):
    from synthloop.labelers.batch import jobs
    from synthloop.labelers.llm import estimated_cost, few_shot_examples, labeling_messages
    from synthloop.llm.pricing import BATCH_DISCOUNT

    server = batch_server
    project, _ = nightly_project
    _, texts = project.store.unlabeled_pool()
    shots = few_shot_examples(project.store, project.task, project.config.llm.few_shot)
    budget = 3.5 * max(estimated_cost(project.config.llm, labeling_messages(project.task, t, shots)) for t in texts) * BATCH_DISCOUNT
    night1 = run_nightly(project, None, max_labels=10, max_cost=budget, labeler="llm-batch")
    costs = [estimated_cost(project.config.llm, labeling_messages(project.task, q.text, shots)) * BATCH_DISCOUNT
             for q in project.store.queries()]
    allowed = next(k for k in range(len(costs) + 1) if k == len(costs) or sum(costs[:k + 1]) > budget)
    assert 3 <= allowed < 10 and night1["batch"]["submitted"] == allowed
    assert night1["batch"]["estimated_cost"] == pytest.approx(sum(costs[:allowed])) and sum(costs[:allowed]) <= budget
    round0 = [q.example_id for q in project.store.queries(round_=0)]
    assert custom_ids(server, "batch-0") == round0[:allowed]

    # The next night (no $ cap): the answers come in, and the queries the budget left out go first, in the
    # same 10 as the new selection.
    night2 = run_nightly(project, None, max_labels=10, labeler="llm-batch")
    assert night2["labels_collected"] == allowed and night2["batch"]["submitted"] == 10
    assert night2["carried_over"] == 10 - allowed and night2["queried"] == allowed
    round1 = [q.example_id for q in project.store.queries(round_=1)]
    assert custom_ids(server, "batch-1") == round0[allowed:] + round1
    assert len(jobs(project.store)) == 1


def test_batch_leftovers_beyond_the_cap_wait_for_the_next_night(nightly_project, batch_server):
    server = batch_server
    project, _ = nightly_project
    night1 = run_nightly(project, None, max_labels=10, max_cost=0, labeler="llm-batch")
    assert night1["queried"] == 10 and night1["batch"]["submitted"] == 0 and server.batches == {}
    round0 = [q.example_id for q in project.store.queries(round_=0)]

    # Fewer than the leftovers: nothing new is selected, and the oldest 4 go out in tonight's job.
    night2 = run_nightly(project, None, max_labels=4, labeler="llm-batch")
    assert night2["queried"] == 0 and night2["batch"]["submitted"] == 4 and night2["held_back"] == 6
    assert custom_ids(server, "batch-0") == round0[:4]
    night3 = run_nightly(project, None, max_labels=8, labeler="llm-batch")
    assert night3["labels_collected"] == 4 and night3["batch"]["submitted"] == 8 and night3["queried"] == 2
    assert custom_ids(server, "batch-1") == round0[4:] + [q.example_id for q in project.store.queries(round_=2)]


def test_batch_answers_count_once_and_a_lost_job_is_sent_again(nightly_project, batch_server):
    from synthloop.labelers import get_labeler
    from synthloop.labelers.batch import jobs

    server = batch_server
    project, _ = nightly_project
    project.round(n=6, labeler="llm-batch")  # submits one job and polls it once
    labeler = get_labeler("llm-batch", project.label_context())
    first = labeler.collect()  # second poll: finished
    assert len(first.labels) == 6 and {label.source for label in first.labels} == {"llm:gpt-4o"}
    # A run killed before these labels were stored: the next collect gives them again, with their usage,
    # which goes to the store in the same transaction as the labels: the cost counts once.
    again = labeler.collect()
    assert [label.example_id for label in again.labels] == [label.example_id for label in first.labels]
    assert len(again.llm_calls) == 6 and project.store.llm_usage() == []
    assert project.store.apply(again, 0) == 6
    assert [u.calls for u in project.store.llm_usage()] == [6]
    done = labeler.collect()
    assert done.labels == [] and [(j.external_id, j.status) for j in done.jobs] == [("batch-0", "done")]
    project.store.apply(done, 0)
    assert jobs(project.store) == {}

    project.round(n=4, labeler="llm-batch")
    sent = [q.example_id for q in project.store.queries(round_=1)]
    assert custom_ids(server, "batch-1") == sent
    server.batches["elsewhere"] = server.batches.pop("batch-1")  # unknown to the server now: a 404
    lost = labeler.collect()
    assert lost.labels == [] and [(j.external_id, j.status) for j in lost.jobs] == [("batch-1", "lost")]
    project.store.apply(lost, 1)
    assert list(jobs(project.store, states=("lost",))["batch-1"].example_ids) == sent
    project.hand_out("llm-batch", [])
    assert custom_ids(server, "batch-2") == sent
