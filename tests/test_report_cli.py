"""`synthloop report` as a person runs it, on a project whose synthetic data and labels came from an LLM.

The LLM is tests/llm_servers.py's FaultServer answering as gpt-4o would, deterministically: it writes
distinct texts for the class a generation prompt asks for, and labels a text with its gold label. The
costs are real arithmetic on the returned token counts at gpt-4o's list price."""

import json
import os
import random
import re
import subprocess
import sys

import pandas as pd
import pytest
from llm_servers import FaultServer
from threadpoolctl import threadpool_limits

from synthloop import Project
from synthloop.llm.pricing import cost_usd
from synthloop.llm.quoting import unquote

WORDS = {
    "spam": "win cash prize claim free call now urgent reply txt mobile offer voucher bonus award guaranteed".split(),
    "ham": "see you later home dinner mum tomorrow work sorry love bus meeting tonight lunch thanks okay".split(),
}
PROMPT_TOKENS, COMPLETION_TOKENS = 20, 5  # what FaultServer's completion() reports for every answer


def kind_of(body: dict) -> str:
    """generate | label | subtopics, from the answer schema the client asked for."""
    properties = body["response_format"]["schema"]["properties"]
    return "generate" if "texts" in properties else "label" if "label" in properties else "subtopics"


def fake_llm(gold: dict[str, str]):
    def answer(body: dict) -> tuple:
        kind = kind_of(body)
        prompt = body["messages"][-1]["content"]
        if kind == "generate":
            label = re.search(r"Class to write: (\w+)", prompt).group(1)
            rng = random.Random(json.dumps(body["messages"]) + str(body.get("seed")))
            texts = [" ".join(rng.choices(WORDS[label], k=9)) for _ in range(5)]
            return ("content", json.dumps({"texts": texts}))
        if kind == "label":
            text = unquote(prompt).strip()  # the prompt carries the text without its edge whitespace
            return ("content", json.dumps({"label": gold[text], "confidence": 0.9}))
        return ("content", json.dumps({"subtopics": ["something"]}))
    return answer


@pytest.fixture
def llm_project(tmp_path, small_pool, monkeypatch):
    pool = pd.read_csv(small_pool / "pool.csv")
    server = FaultServer()
    server.reset(fake_llm(dict(zip(pool.text.str.strip(), pool.label))))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # never sent anywhere but the local server
    project = Project.init(
        tmp_path / "proj", small_pool / "task.toml", loop={"batch_size": 10, "labeler": "llm"},
        llm={"model": "gpt-4o", "base_url": server.base_url, "response_format": "json_object_schema",
             "max_retries": 0, "logprobs": False},
        synth={"subtopics": 0, "per_call": 5, "topup": True, "topup_threshold": 0.45, "topup_target": 0.5,
               "topup_max_per_round": 5})
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    try:
        with threadpool_limits(1):
            generated = project.generate(5)
            project.loop(3)
        yield project, server, generated
    finally:
        project.close()
        server.stop()


def env_1() -> dict:
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1"}


def run_report(root) -> dict:
    done = subprocess.run([sys.executable, "-m", "synthloop", "report", "--project", str(root), "--json"],
                          capture_output=True, text=True, env=env_1(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_report_on_an_llm_project_shows_cost_by_purpose_sources_and_synthetic(llm_project):
    project, server, generated = llm_project
    assert generated.added == {"ham": 5, "spam": 5}
    calls = {k: sum(kind_of(r["body"]) == k for r in server.requests) for k in ("generate", "label")}
    topups = [r.counts.get("synthetic_added", {}) for r in project.store.rounds()]
    labeled = sum(q.status == "labeled" for q in project.store.queries())

    report = run_report(project.root)

    # LLM $ by purpose: generation and labeling apart, each the sum of its calls at gpt-4o's list price.
    per_call = cost_usd("gpt-4o", PROMPT_TOKENS, COMPLETION_TOKENS)
    by_purpose = report["llm"]["by_purpose"]
    assert calls["generate"] >= 2 and calls["label"] == labeled == 30  # 3 rounds of 10 queries
    for purpose in ("generate", "label"):
        assert by_purpose[purpose]["calls"] == calls[purpose]
        assert by_purpose[purpose]["cost"] == pytest.approx(calls[purpose] * per_call) and by_purpose[purpose]["cost"] > 0
    assert report["llm"]["total_cost"] == pytest.approx(sum(calls.values()) * per_call)
    assert sum(r.get("label", 0) for r in report["llm"]["per_round"]) == pytest.approx(calls["label"] * per_call)

    # Labels by source: the LLM's (gold answers here), the synthetic texts, nothing else.
    by_source = report["labels_by_source"]
    assert set(by_source) == {"llm:gpt-4o", "synthetic:gpt-4o"}
    assert sum(by_source["llm:gpt-4o"].values()) == labeled
    synthetic_total = {lab: 5 + sum(t.get(lab, 0) for t in topups) for lab in ("ham", "spam")}
    assert by_source["synthetic:gpt-4o"] == {lab: n for lab, n in synthetic_total.items() if n}

    # Synthetic added per class: `generate` (outside any round's top-up), then each round's top-up.
    assert report["synthetic_added"][0] == {"round": None, "ham": 5, "spam": 5}
    assert report["synthetic_added"][1:] == [{"round": r.number, **r.counts["synthetic_added"]}
                                             for r in project.store.rounds() if r.counts.get("synthetic_added")]
    assert any(topups), "spam is far under 45% of the first real labels: the top-up should have run"

    # Every round's confusion matrix and labels; the latest round's total is every label stored.
    per_round = report["per_round"]
    assert [r["round"] for r in per_round] == [0, 1, 2]
    assert all(sum(map(sum, r["confusion"]["matrix"])) == len(project.store.test_set()[0]) for r in per_round)
    assert per_round[-1]["labels_total"] == by_source
    assert sum(sum(c.values()) for r in per_round for c in r["labels_added"].values()) == sum(
        sum(c.values()) for c in by_source.values())
    assert sum(per_round[1]["labels_added"]["llm:gpt-4o"].values()) == 10  # round 1's queries, labeled by the LLM

    assert report["latency"]["p50_ms"] > 0 and report["counterfactual"]["rows"][0]["what"].startswith("compact model")
    md = open(report["paths"]["md"]).read()
    assert "| generate | gpt-4o |" in md and "| label | gpt-4o |" in md and "| llm:gpt-4o |" in md
    html = open(report["paths"]["html"]).read()
    for alt in ("LLM cost over rounds", "synthetic examples added", "labels by source over rounds",
                "test errors by true class over rounds"):
        assert f'alt="{alt}"' in html

    # --out naming a file is one clear line and exit status 2, not a traceback.
    a_file = project.root / "notes.txt"
    a_file.write_text("mine")
    done = subprocess.run([sys.executable, "-m", "synthloop", "report", "--project", str(project.root), "--out",
                           str(a_file), "--no-latency"], capture_output=True, text=True, env=env_1(), timeout=600)
    assert done.returncode == 2 and "is a file; --out names the folder" in done.stderr and "Traceback" not in done.stderr
    assert a_file.read_text() == "mine"

    # `synthloop status` shows the report's CO2 estimate (codecarbon samples while the report runs), and the
    # LLM cost per round, generation counted in round 0, whose model trained on it.
    done = subprocess.run([sys.executable, "-m", "synthloop", "status", "--project", str(project.root), "--json",
                           "--no-latency"], capture_output=True, text=True, env=env_1(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    impact = json.loads(done.stdout)["impact"]
    assert impact["co2"]["report"] == report["paths"]["json"] and impact["co2"]["generated_at"] == report["generated_at"]
    assert impact["co2"].get("measured_kg_co2") == report["co2"].get("measured_kg_co2")
    by_round = {r["round"]: r for r in impact["llm_by_round"]}
    assert sorted(by_round) == [0, 1, 2] and sum(r["calls"] for r in by_round.values()) == sum(calls.values())
    assert by_round[0]["calls"] >= calls["generate"]
