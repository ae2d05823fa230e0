"""The LLM path end to end against a real local OpenAI-compatible server (llama.cpp via xllamacpp, SmolLM2-135M).

The model is tiny: these tests check structure (valid JSON, labels in the enum, costs counted), not quality.
"""

import math
import re
from typing import Literal

import pytest
from pydantic import BaseModel

from synthloop.llm.client import LLMClient
from synthloop.llm.serve import LOCAL_MODEL_NAME


class Answer(BaseModel):
    label: Literal["ham", "spam"]


MESSAGES = [{"role": "user", "content": "Is this SMS spam or ham? 'WIN a free prize, call now!' Answer in JSON."}]


def test_auto_mode_settles_on_json_schema(local_llm):
    client = LLMClient(LOCAL_MODEL_NAME, base_url=local_llm.base_url, response_format="auto")
    result = client.complete_json(MESSAGES, Answer, temperature=0, max_tokens=30)
    assert client.mode == "json_schema"  # llama.cpp's server compiles the schema into a grammar
    assert result.value is not None and result.value.label in ("ham", "spam")
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0 and result.usage.cost == 0.0


def test_json_object_with_a_schema_is_held_to_it_too(local_llm):
    client = LLMClient(LOCAL_MODEL_NAME, base_url=local_llm.base_url, response_format="json_object_schema", max_retries=0)
    result = client.complete_json(MESSAGES, Answer, temperature=0, max_tokens=30)
    assert result.value is not None and result.value.label in ("ham", "spam")


def test_logprobs_give_the_labeler_a_confidence(local_llm):
    from synthloop.labelers.llm import logprob_confidence

    client = LLMClient(LOCAL_MODEL_NAME, base_url=local_llm.base_url, response_format="json_schema")
    result = client.complete_json(MESSAGES, Answer, temperature=0, max_tokens=30, logprobs=True)
    assert result.value is not None and result.logprobs
    assert all(isinstance(t["token"], str) and t["logprob"] <= 0 for t in result.logprobs)
    # The label's own tokens are among those the server reports, so the confidence comes from them.
    confidence = logprob_confidence(result.logprobs, result.value.label)
    # The probability of exactly the tokens that spell the label's value (found here by the JSON around it), not of
    # the whole answer: the product of those tokens' probabilities.
    content = "".join(t["token"] for t in result.logprobs)
    value = re.search(r'"label"\s*:\s*"(' + re.escape(result.value.label) + ')"', content)
    assert value is not None, content
    spans, pos = [], 0
    for t in result.logprobs:
        spans.append((pos, pos + len(t["token"]), t["logprob"]))
        pos += len(t["token"])
    label_lps = [lp for start, end, lp in spans if start < value.end(1) and end > value.start(1)]
    assert label_lps and len(label_lps) < len(result.logprobs)
    assert confidence == pytest.approx(math.exp(sum(label_lps)))


def test_the_server_answers_to_its_alias(local_llm):
    from openai import OpenAI

    sdk = OpenAI(base_url=local_llm.base_url, api_key="x", timeout=60)
    assert [m.id for m in sdk.models.list().data] == [LOCAL_MODEL_NAME] == [local_llm.model_name]
    answer = sdk.chat.completions.create(model=LOCAL_MODEL_NAME, max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
    assert answer.model == LOCAL_MODEL_NAME


def test_many_keeps_order(local_llm):
    client = LLMClient(LOCAL_MODEL_NAME, base_url=local_llm.base_url, response_format="json_object_schema", concurrency=2)
    texts = ["hello mum", "FREE entry WIN cash", "see you at 5"]
    results = client.complete_json_many([[{"role": "user", "content": f"Label: {t}"}] for t in texts], Answer,
                                        temperature=0, max_tokens=20)
    assert len(results) == 3 and all(r.value is not None for r in results)


def test_llm_labeler_round_stores_enum_labels_with_costs(llm_project):
    # SmolLM2-135M answers "abstain" for most SMS texts; without that choice it must pick a label.
    llm_project.config.llm.abstain = False
    result = llm_project.round(labeler="llm")
    assert result.queried == 10
    statuses = llm_project.store.query_counts()
    assert sum(statuses.values()) == 10 and set(statuses) <= {"labeled", "failed"} and statuses.get("labeled", 0) > 0
    rows = llm_project.store.training_set()
    assert len(rows) == statuses["labeled"]
    assert all(r[2] in ("ham", "spam") and r[3] == f"llm:{LOCAL_MODEL_NAME}" for r in rows)
    [usage] = llm_project.store.llm_usage()
    assert usage.purpose == "label" and usage.calls == 10 and usage.prompt_tokens > 0 and usage.cost == 0


def test_generate_stores_filtered_synthetic_examples(llm_project):
    # Short answers keep the tiny CPU model quick; the schema bounds hold it to them.
    llm_project.config.synth.per_call, llm_project.config.synth.max_chars = 2, 120
    report = llm_project.generate(4)
    assert set(report.added) == {"ham", "spam"} and sum(report.added.values()) > 0
    counts = llm_project.store.count_examples()
    assert counts[("pool", "synthetic")] == sum(report.added.values())
    synthetic = [r for r in llm_project.store.training_set() if r[3].startswith("synthetic:")]
    assert len(synthetic) == sum(report.added.values())
    assert all(8 <= len(r[1]) <= 120 for r in synthetic)
    usage = {u.purpose: u for u in llm_project.store.llm_usage()}
    assert usage["generate"].calls >= 2 and usage["generate"].completion_tokens > 0
    # Synthetic texts never become queries: they are not part of the pool to label.
    ids = {r[0] for r in synthetic}
    assert not ids & set(llm_project.store.unlabeled_pool()[0])


def test_minority_topup_records_what_it_added(llm_project):
    from synthloop.store import NewLabel

    ids, texts = llm_project.store.unlabeled_pool()
    llm_project.store.record_labels([NewLabel(i, "ham", "human:test") for i in ids[:12]], None)
    llm_project.config.synth.topup = True
    llm_project.config.synth.topup_max_per_round = 4
    llm_project.config.synth.per_call, llm_project.config.synth.max_chars = 2, 120
    result = llm_project.round()
    added = llm_project.store.round(result.number).counts.get("synthetic_added", {})
    assert set(added) == {"spam"} and 0 < added["spam"] <= 4


def test_consistency_filter_relabels_every_kept_text_once(llm_project):
    # Which texts the tiny model puts back in their class is up to it (tests/test_synth.py checks the
    # decisions with an LLM whose answers the test writes); here: the accounting against a real server.
    llm_project.config.synth.per_call, llm_project.config.synth.max_chars = 2, 120
    report = llm_project.generate(3, consistency_filter=True)
    kept, dropped = sum(report.added.values()), report.dropped["label disagreement"]
    usage = {u.purpose: u for u in llm_project.store.llm_usage()}
    assert usage["filter"].calls == kept + dropped > 0
    synthetic = [r for r in llm_project.store.training_set() if r[3].startswith("synthetic:")]
    assert len(synthetic) == kept == llm_project.store.count_examples().get(("pool", "synthetic"), 0)


def test_consistency_filter_is_off_by_default(llm_project):
    llm_project.config.synth.per_call, llm_project.config.synth.max_chars = 2, 120
    report = llm_project.generate({"spam": 2})
    assert "label disagreement" not in report.dropped
    assert "filter" not in {u.purpose for u in llm_project.store.llm_usage()}


def test_pool_style_generation_with_checked_subtopics_embedding_filter_and_balance(llm_project):
    # The real server writes the texts, sub-topics and all: which texts survive is up to the tiny model; what is
    # checked is that each step ran on what it wrote and that the accounting adds up.
    cfg = llm_project.config.synth
    cfg.per_call, cfg.max_chars, cfg.style_examples = 2, 120, 2
    cfg.subtopic_check, cfg.embedding_filter, cfg.balance = True, True, True
    report = llm_project.generate(3)
    candidates = report.candidates
    assert candidates and all("embedding" in c and "llm" not in c for cands in candidates.values() for c in cands)
    rejected = sum(not c["embedding"] for cands in candidates.values() for c in cands)
    # Texts already past the per-class count are not counted as drops: at most every rejected one is.
    assert report.dropped["embedding disagreement"] <= rejected
    added = report.added
    assert len(set(added.values())) == 1  # balanced: every class the same size
    stored = [r for r in llm_project.store.training_set() if r[3].startswith("synthetic:")]
    assert len(stored) == sum(added.values())
    verdict = {c["text"]: c["embedding"] for cands in candidates.values() for c in cands}
    assert all(verdict[r[1]] for r in stored)  # nothing the embedding check rejected was stored
    # The sub-topic request ran, and sub-topics were either kept (then named in prompts) or dropped (counted).
    usage = {u.purpose: u for u in llm_project.store.llm_usage()}
    assert usage["generate"].calls >= 2 + 2  # the two sub-topic lists, then generation
