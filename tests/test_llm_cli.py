"""`synthloop generate` and `synthloop label --with llm` as a user runs them: real subprocesses against the
real local LLM server (llama.cpp, SmolLM2-135M). The model is tiny: these check structure, not quality."""

import json
import subprocess
import sys
import tomllib

import pytest
import tomli_w

from synthloop import Project
from synthloop.llm.serve import LOCAL_MODEL_NAME


def run(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "synthloop", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False)
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
    config["synth"] = {**config.get("synth", {}), "per_call": 2, "max_chars": 120}
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


# SmolLM2-135M answers "abstain" for most SMS texts at temperature 0 (the query is then skipped); the
# first of these it labels spam, so at least one label is stored whatever the others get.
POOL = ["URGENT! Your mobile number has been awarded a cash prize. Text CLAIM to 80808",
        "Running late, see you at 6", "ok thanks mum"]


def test_label_with_llm_stores_llm_labels_and_usage(cli_project, tmp_path):
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in POOL))
    run("import", tmp_path / "pool.jsonl", cwd=cli_project)
    queried = json.loads(run("query", "--n", "3", "--json", cwd=cli_project))
    assert sorted(q["text"] for q in queried["queries"]) == sorted(POOL)

    result = json.loads(run("label", "--with", "llm", "--json", cwd=cli_project))
    assert result["pending"] == 0 and 0 < result["labels_added"] <= 3

    source = f"llm:{LOCAL_MODEL_NAME}"
    status = json.loads(run("status", "--json", cwd=cli_project))
    assert sum(status["labels"][source].values()) == result["labels_added"] and set(status["labels"]) == {source}
    assert sum(status["queries"].values()) == 3 and set(status["queries"]) <= {"labeled", "failed", "skipped"}
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
