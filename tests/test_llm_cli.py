"""`synthloop generate` and `synthloop label --with llm` as a user runs them: real subprocesses against the
real local LLM server (llama.cpp via xllamacpp, SmolLM2-135M). The model is tiny: these check structure, not quality."""

import json
import subprocess
import sys
import tomllib

import pytest
import tomli_w
from forkserver import run_synthloop

from synthloop import Project
from synthloop.llm.serve import LOCAL_MODEL_NAME


def run(*args, cwd):
    proc = run_synthloop(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def cli_project(tmp_path, example_dir, local_llm):
    """A project made with `synthloop init`, its synthloop.toml pointed at the local server as a user would."""
    run("init", "proj", "--task", example_dir / "task.toml", cwd=tmp_path)
    proj = tmp_path / "proj"
    path = proj / "synthloop.toml"
    config = tomllib.loads(path.read_text())
    config["llm"] = {**config.get("llm", {}), "model": LOCAL_MODEL_NAME, "base_url": local_llm.base_url}
    # Two short texts per call keep the tiny CPU model quick; the schema bounds hold it to them.
    config["synth"] = {**config.get("synth", {}), "per_call": 2, "max_chars": 120, "subtopics": 2}
    path.write_text(tomli_w.dumps(config))
    return proj


def test_generate_per_class_stores_synthetic_examples(cli_project):
    summary = json.loads(run("generate", "--per-class", "2", "--json", cwd=cli_project))
    assert summary["requested"] == {"ham": 2, "spam": 2} and set(summary["added"]) == {"ham", "spam"}
    added = sum(summary["added"].values())
    assert 0 < added <= 4 and summary["cost"] == 0  # a local model has no price

    status = json.loads(run("status", "--json", cwd=cli_project))
    assert status["examples"]["pool/synthetic"] == added
    assert status["labels"][f"synthetic:{LOCAL_MODEL_NAME}"] == {k: v for k, v in summary["added"].items() if v}
    [usage] = status["llm"]
    assert usage["purpose"] == "generate" and usage["model"] == LOCAL_MODEL_NAME and usage["calls"] >= 2
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert status["impact"]["llm_by_purpose"]["generate"]["calls"] == usage["calls"]
    text = run("status", "--no-latency", cwd=cli_project)
    assert "LLM usage" in text and "generate" in text and LOCAL_MODEL_NAME in text
    assert summary["llm_calls"] == usage["calls"] and summary["llm_calls_failed"] == usage["failed"]
    assert summary["minutes"] > 0

    # Without --json the run ends with what it took: calls, failures, minutes.
    import re

    text = run("generate", "--per-class", "1", cwd=cli_project)
    line = re.search(r"(\d+) LLM calls, (\d+) failed, in (\d+\.\d) min", text)
    [after] = json.loads(run("status", "--json", cwd=cli_project))["llm"]
    assert line and int(line[1]) == after["calls"] - usage["calls"] > 0
    assert int(line[2]) == after["failed"] - usage["failed"]


POOL = ["URGENT! Your mobile number has been awarded a cash prize. Text CLAIM to 80808",
        "Running late, see you at 6", "ok thanks mum"]


def no_abstaining(cli_project) -> None:
    # SmolLM2-135M answers "abstain" for most SMS texts at temperature 0 (the query is then skipped, and
    # nothing is stored); a user of such a small model turns abstaining off.
    path = cli_project / "synthloop.toml"
    config = tomllib.loads(path.read_text())
    config["llm"]["abstain"] = False
    path.write_text(tomli_w.dumps(config))


def test_label_with_llm_stores_llm_labels_and_usage(cli_project, tmp_path):
    no_abstaining(cli_project)
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in POOL))
    run("import", tmp_path / "pool.jsonl", cwd=cli_project)
    queried = json.loads(run("query", "--n", "3", "--json", cwd=cli_project))
    assert sorted(q["text"] for q in queried["queries"]) == sorted(POOL)

    result = json.loads(run("label", "--with", "llm", "--json", cwd=cli_project))
    assert result["pending"] == 0 and 0 < result["labels_added"] <= 3

    source = f"llm:{LOCAL_MODEL_NAME}"
    status = json.loads(run("status", "--json", cwd=cli_project))
    assert sum(status["labels"][source].values()) == result["labels_added"] and set(status["labels"]) == {source}
    assert sum(status["queries"].values()) == 3 and set(status["queries"]) <= {"labeled", "failed"}
    [usage] = status["llm"]
    assert usage["purpose"] == "label" and usage["calls"] == 3 and usage["prompt_tokens"] > 0 and usage["cost"] == 0
    assert status["impact"]["llm_by_purpose"]["label"]["calls"] == 3
    text = run("status", "--no-latency", cwd=cli_project)
    assert source in text and "LLM usage" in text and "label" in text

    project = Project(cli_project)
    try:
        rows = project.store.training_set()
        assert len(rows) == result["labels_added"] and all(r[2] in ("ham", "spam") and r[3] == source for r in rows)
        assert {q.routed_to for q in project.store.queries()} == {"llm"}
    finally:
        project.close()


def test_round_with_the_llm_labeler(cli_project, small_pool):
    no_abstaining(cli_project)
    path = cli_project / "synthloop.toml"
    config = tomllib.loads(path.read_text())
    config["loop"] = {**config.get("loop", {}), "batch_size": 4}
    path.write_text(tomli_w.dumps(config))
    run("import", small_pool / "pool.csv", "--label-col", "label", "--gold", cwd=cli_project)
    first = json.loads(run("round", "--labeler", "llm", "--json", cwd=cli_project))
    assert first["queried"] == 4
    second = json.loads(run("round", "--json", "--labeler", "llm", cwd=cli_project))
    assert second["number"] == first["number"] + 1 and second["queried"] == 4
    status = json.loads(run("status", "--json", "--no-latency", cwd=cli_project))
    source = f"llm:{LOCAL_MODEL_NAME}"
    # The LLM answers at once: every query is labeled, or failed when its answer was invalid.
    assert sum(status["queries"].values()) == 8 and set(status["queries"]) <= {"labeled", "failed"}
    assert sum(status["labels"][source].values()) == status["queries"]["labeled"] > 0
    assert {u["purpose"] for u in status["llm"]} == {"label"}
    assert [r["round"] for r in status["impact"]["llm_by_round"]] == [0, 1]


def test_llm_serve_answers_until_interrupted(tmp_path):
    import signal
    import time

    from llm_servers import need_local_llm
    from openai import OpenAI

    from synthloop.llm.serve import free_port

    need_local_llm()  # skip (fail under CI) without xllamacpp and the model, as the fixture does
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "synthloop", "llm", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the server answers
        assert f"http://127.0.0.1:{port}/v1" in line, proc.stderr.read() if proc.poll() is not None else line
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=60)
        answer = client.chat.completions.create(model=LOCAL_MODEL_NAME, max_tokens=5,
                                                messages=[{"role": "user", "content": "Say hi"}])
        assert answer.choices[0].message.content is not None and answer.usage.completion_tokens > 0
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0
    import socket

    def port_open() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    # The llama.cpp child went with it: poll (a loaded machine may take a while to reap it), never just sleep.
    deadline = time.monotonic() + 30
    while port_open() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open()


def test_the_makefile_installs_the_xllamacpp_that_pyproject_pins():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pinned = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["llm"]
    makefile = re.search(r"^XLLAMACPP := (\S+)$", (root / "Makefile").read_text(), re.MULTILINE)
    assert makefile is not None and pinned == [makefile.group(1)]
