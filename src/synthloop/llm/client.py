"""One client over the openai SDK: structured output validated by pydantic, retries, cache, usage.

HTTP failures (429 with Retry-After, 5xx, timeouts) are retried by the SDK's own backoff
(`max_retries`); this module only retries answers that fail validation (truncated or off-schema).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import openai
from pydantic import BaseModel, ValidationError

from synthloop.errors import SynthloopError
from synthloop.llm.pricing import cost_usd, is_priced

MODES = ("json_schema", "json_object_schema", "prompt")
LOCAL_KEY = "not-needed"  # local OpenAI-compatible servers accept any key
OPENAI_HOST = "api.openai.com"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
LOCAL_TIMEOUT = 600.0  # seconds: a 1.5B model on a busy 2-core machine writes a few tokens a second

log = logging.getLogger(__name__)

try:  # the SDK's own strict-schema rewrite, the one `chat.completions.parse` uses
    from openai.lib._pydantic import to_strict_json_schema
except ImportError:  # pragma: no cover - an SDK that moved it: fall back to a non-strict schema
    to_strict_json_schema = None  # type: ignore[assignment]


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0  # USD
    latency: float = 0.0  # seconds, all attempts together


@dataclass
class Result:
    """A validated answer (`value`), or `value=None` with `error` set: a failure to record, never a label."""

    value: BaseModel | None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    logprobs: list[dict] | None = None  # [{"token", "logprob", "top": {token: logprob}}] when asked for
    cached: bool = False
    attempts: int = 0
    # The server did not answer (429 or 5xx after the SDK's retries, a timeout, no connection): asking again
    # later may work, unlike an answer that failed validation.
    transient: bool = False

    @property
    def ok(self) -> bool:
        return self.value is not None


class DictCache:
    """In-memory stand-in for the store's cache (`get`/`put`)."""

    def __init__(self):
        self.data: dict[str, dict] = {}

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, key: str, value: dict) -> None:
        self.data[key] = value


def _http_error(err: openai.APIStatusError) -> str:
    detail = err.body.get("message") if isinstance(err.body, dict) else None
    return f"HTTP {err.status_code}: {detail or err.message}"


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret and len(secret) > 3 else text


def _json_text(content: str) -> str:
    """The JSON object inside an answer: models in prompt mode like to wrap it in ``` fences or prose."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", content, re.S)
    if fenced:
        return fenced.group(1)
    start, end = content.find("{"), content.rfind("}")
    return content[start:end + 1] if 0 <= start < end else content


def validate_answer(schema_model: type[BaseModel], content: str) -> BaseModel:
    """The answer as `schema_model`; on failure, the ValidationError of the answer as it came."""
    try:
        return schema_model.model_validate_json(content)
    except ValidationError as err:
        first = err
    inner = _json_text(content)
    if inner != content:
        try:
            return schema_model.model_validate_json(inner)
        except ValidationError:
            pass
    # llama.cpp's JSON grammar lets raw newlines and tabs into strings, which strict JSON forbids.
    try:
        return schema_model.model_validate(json.loads(inner, strict=False))
    except ValueError:  # JSONDecodeError and pydantic's ValidationError are both ValueErrors
        pass
    raise first


class LLMClient:
    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, timeout: float | None = None,
                 max_retries: int = 4, concurrency: int | None = None, response_format: str = "auto", cache=None,
                 prices: dict | None = None, validation_retries: int = 2, api_key_env: str = "OPENAI_API_KEY",
                 base_url_env: str = "OPENAI_BASE_URL", deadline: float | None = None):
        if response_format not in ("auto", *MODES):
            raise SynthloopError(f"response_format must be auto or one of {', '.join(MODES)}, not {response_format!r}")
        self.model = model
        # Only the variables named: a key meant for one server must not go to another one by a fallback.
        self.base_url = base_url or os.environ.get(base_url_env) or None
        key = api_key or os.environ.get(api_key_env)
        self.api_key_env = api_key_env
        if not key:
            if self.base_url is None:
                raise SynthloopError(f"no API key: set {api_key_env} in the environment, or point [llm] base_url at a local server")
            key = LOCAL_KEY
        is_openai = self.base_url is None or OPENAI_HOST in self.base_url
        # None until the first answer settles it: other servers are probed, json_schema first, once per server
        # (the answer is kept in the cache, so later processes do not probe again).
        self.mode = response_format if response_format != "auto" else ("json_schema" if is_openai else None)
        # A server on this machine (llama.cpp's: one request at a time) only queues what is in flight: 4 at once
        # gave the same tokens/s as 1 and 3x the latency (measured), so a 60 s timeout would cut calls off.
        local = urlsplit(self.base_url or "").hostname in LOCAL_HOSTS
        self.concurrency = max(1, concurrency or (1 if local else 4))
        timeout = timeout or (LOCAL_TIMEOUT if local else 60.0)
        self.cache = cache
        self.deadline = deadline  # seconds one complete_json_many may take; requests not begun by then are not sent
        self._probed = self.mode is not None
        if self.mode is None and cache is not None:
            known = cache.get(self._mode_key())
            if known and known.get("value") in MODES:
                self.mode, self._probed = known["value"], True
        self.prices = prices
        self.validation_retries = validation_retries
        if is_openai and not is_priced(model, prices):
            log.warning("no price known for %s: its cost counts as 0; add it under [llm.prices]", model)
        # The key lives only inside the SDK client, which sends it and never logs it.
        self.sdk = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=max_retries)

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={self.base_url!r}, mode={self.mode!r})"

    __str__ = __repr__

    def close(self) -> None:
        self.sdk.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # requests -----------------------------------------------------------------------------------
    def response_format_for(self, mode: str, schema_model: type[BaseModel]) -> dict | None:
        if mode == "json_schema":
            strict = to_strict_json_schema is not None
            schema = to_strict_json_schema(schema_model) if strict else schema_model.model_json_schema()
            return {"type": "json_schema", "json_schema": {"name": schema_model.__name__, "schema": schema, "strict": strict}}
        if mode == "json_object_schema":
            return {"type": "json_object", "schema": schema_model.model_json_schema()}
        return None

    def request_messages(self, mode: str, messages: list[dict], schema_model: type[BaseModel]) -> list[dict]:
        if mode != "prompt":
            return messages
        hint = "Reply with only a JSON object matching this JSON schema:\n" + json.dumps(schema_model.model_json_schema())
        return [{"role": "system", "content": hint}, *messages]

    def cache_key(self, messages: list[dict], schema_model: type[BaseModel], params: dict) -> str:
        blob = json.dumps({"model": self.model, "messages": messages, "params": params,
                           "schema": schema_model.model_json_schema()}, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def request_body(self, mode: str, messages: list[dict], schema_model: type[BaseModel], params: dict) -> dict:
        """The chat-completions body (also what a Batch API line carries)."""
        body = {"model": self.model, "messages": self.request_messages(mode, messages, schema_model), **params}
        if body.pop("logprobs", False):
            body["logprobs"] = True
            # llama.cpp's server returns no logprobs at all unless top_logprobs is set.
            body.setdefault("top_logprobs", 1)
        fmt = self.response_format_for(mode, schema_model)
        if fmt is not None:
            body["response_format"] = fmt
        return body

    def _call(self, mode: str, messages: list[dict], schema_model: type[BaseModel], params: dict, probing: bool):
        # While probing which format the server takes, a rejection must come back at once, not after retries.
        sdk = self.sdk.with_options(max_retries=0) if probing else self.sdk
        return sdk.chat.completions.create(**self.request_body(mode, messages, schema_model, params))

    @staticmethod
    def _rejects_format(err: openai.APIStatusError) -> bool:
        # llama.cpp answers json_schema with HTTP 500; other servers with 400/422 naming response_format.
        text = (str(getattr(err, "message", "")) + str(getattr(err, "body", ""))).lower()
        return err.status_code in (400, 422, 500) and ("response_format" in text or "schema" in text)

    def _mode_key(self) -> str:
        return "response_format:" + hashlib.sha256(f"{self.base_url}|{self.model}".encode()).hexdigest()

    def _settle(self, mode: str) -> None:
        self.mode, self._probed = mode, True
        if self.cache is not None:
            self.cache.put(self._mode_key(), {"value": mode})

    def _send(self, messages: list[dict], schema_model: type[BaseModel], params: dict):
        """One answer from the server, settling the response format first when it is not known yet. The probe
        is one request without retries, once per client: a server that fails it for another reason (a 429, a
        hang) is then asked with json_schema, and a later format rejection still moves down a mode."""
        if self.mode is None and not self._probed:
            self._probed = True
            try:
                response = self._call("json_schema", messages, schema_model, params, probing=True)
                self._settle("json_schema")
                return response
            except openai.APIStatusError as err:
                # Anything not about the format (a 429, a 503) is asked again below, with the SDK's retries.
                if self._rejects_format(err):
                    log.info("%s rejects response_format json_schema; using json_object with a schema", self.base_url)
                    self._settle("json_object_schema")
            except (openai.APITimeoutError, openai.APIConnectionError):
                pass
        mode = self.mode or "json_schema"
        try:
            response = self._call(mode, messages, schema_model, params, probing=False)
            if self.mode is None:
                self._settle(mode)
            return response
        except openai.APIStatusError as err:
            lower = {"json_schema": "json_object_schema", "json_object_schema": "prompt"}.get(mode)
            if lower and self._rejects_format(err) and (mode == "json_schema" or err.status_code in (400, 422)):
                log.info("%s rejects response_format %s; using %s", self.base_url, mode, lower)
                self._settle(lower)
                return self._send(messages, schema_model, params)
            raise

    def complete_json(self, messages: list[dict], schema_model: type[BaseModel], **params) -> Result:
        """An answer validated by `schema_model`; failures come back as a Result with `error` set."""
        key = self.cache_key(messages, schema_model, params)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                try:
                    return Result(schema_model.model_validate(hit["value"]), logprobs=hit.get("logprobs"), cached=True)
                except ValidationError:
                    pass  # an entry from an older schema: ask again
        usage, errors, attempts = Usage(), [], 0
        send_params = dict(params)
        for _ in range(self.validation_retries + 1):
            attempts += 1
            start = time.perf_counter()
            try:
                response = self._send(messages, schema_model, send_params)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                # Every other call would be refused too: stop with the fix rather than fail each query.
                raise SynthloopError(_scrub(
                    f"{self.base_url or 'the OpenAI API'} refused the API key ({_http_error(err)}); "
                    f"set {self.api_key_env} to a key that may use {self.model}", self.sdk.api_key)) from None
            except openai.APIStatusError as err:
                return self._failed(_http_error(err), usage, attempts,
                                    transient=err.status_code == 429 or err.status_code >= 500)
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                return self._failed(f"{type(err).__name__}: {err}", usage, attempts, transient=True)
            except (openai.APIError, ValueError) as err:
                # A reply that is no completion at all (an HTML page, a body that is not JSON): a proxy or a
                # broken server in the way. Asking again later may work.
                return self._failed(f"not a chat completion ({type(err).__name__}: {str(err)[:200]})", usage, attempts,
                                    transient=True)
            finally:
                usage.latency += time.perf_counter() - start
            tokens = getattr(response, "usage", None)
            if tokens is not None:
                usage.prompt_tokens += getattr(tokens, "prompt_tokens", 0) or 0
                usage.completion_tokens += getattr(tokens, "completion_tokens", 0) or 0
            usage.cost = cost_usd(self.model, usage.prompt_tokens, usage.completion_tokens, prices=self.prices)
            choice = _first_choice(response)
            if choice is None:
                # A 200 whose body is HTML, `null`, or JSON without choices: not an answer, and not the
                # model's fault either; asked again later (up to [llm] max_unanswered).
                return self._failed(f"not a chat completion: {_describe(response)}", usage, attempts, transient=True)
            content = choice.message.content or ""
            try:
                value = validate_answer(schema_model, content)
            except ValidationError as err:
                truncated = choice.finish_reason == "length"
                reason = "truncated answer" if truncated else "answer off the schema"
                errors.append(f"{reason}: {err.errors()[0]['msg']}")
                send_params = retry_params(send_params, truncated)
                continue
            logprobs = _token_logprobs(choice)
            if self.cache is not None:
                self.cache.put(key, {"value": value.model_dump(mode="json"), "logprobs": logprobs})
            return Result(value, usage=usage, logprobs=logprobs, attempts=attempts)
        return self._failed("; ".join(errors), usage, attempts)

    def _failed(self, error: str, usage: Usage, attempts: int, transient: bool = False) -> Result:
        return Result(None, error=_scrub(error, self.sdk.api_key), usage=usage, attempts=attempts, transient=transient)

    def complete_json_many(self, requests: Sequence[list[dict]], schema_model: type[BaseModel],
                           per_request: Sequence[dict] | None = None, on_result: Callable[[Result], None] | None = None,
                           **params) -> list[Result]:
        """Many requests, at most `concurrency` at a time, answers in the order asked. `per_request`
        holds extra parameters for each request (e.g. a seed). `on_result` gets each result as it completes, in
        this thread (so a killed run has recorded the usage of every request that was answered). Requests not
        begun within `deadline` seconds come back as transient failures, to be asked again later."""
        jobs = list(zip(requests, per_request if per_request is not None else [{}] * len(requests)))
        results: list[Result | None] = [None] * len(jobs)
        ends = None if self.deadline is None else time.monotonic() + self.deadline

        def one(job):
            if ends is not None and time.monotonic() > ends:
                return Result(None, error=f"not sent: the {self.deadline:g} s deadline for these requests passed",
                              transient=True)
            return self.complete_json(job[0], schema_model, **params, **job[1])

        def done(k: int, result: Result) -> None:
            results[k] = result
            if on_result is not None and (result.attempts or result.cached):  # one never sent cost nothing
                on_result(result)

        start = 0
        if jobs and self.mode is None and not self._probed:
            done(0, one(jobs[0]))  # the probe settles the response format before fanning out
            start = 1
        if start < len(jobs):
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                futures = {pool.submit(one, jobs[k]): k for k in range(start, len(jobs))}
                for future in as_completed(futures):
                    done(futures[future], future.result())
        return results  # type: ignore[return-value]


RETRY_MIN_TEMPERATURE = 0.7
MAX_RETRY_TOKENS = 4096


def retry_params(params: dict, truncated: bool) -> dict:
    """The parameters for asking again after an invalid answer. The same request would get the same answer
    (greedy or seeded sampling is deterministic), so a retry samples anew: another seed and, at a low
    temperature, a higher one. A truncated answer gets twice the room."""
    new = dict(params)
    new["seed"] = int(params.get("seed", 0)) + 1
    if new.get("temperature") is not None and new["temperature"] < RETRY_MIN_TEMPERATURE:
        new["temperature"] = RETRY_MIN_TEMPERATURE
    if truncated and new.get("max_tokens"):
        new["max_tokens"] = min(2 * new["max_tokens"], MAX_RETRY_TOKENS)
    return new


def _first_choice(response):
    """The first choice of a chat completion, or None when the reply is not one (the SDK hands back a str for
    an HTML page, None for a `null` body, and a model with no choices for `{}`)."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        return None
    choice = choices[0]
    return choice if getattr(choice, "message", None) is not None else None


def _describe(response) -> str:
    if isinstance(response, str):
        return f"the server sent text, not JSON ({response[:80]!r})"
    if response is None:
        return "the server sent an empty or null body"
    return "the reply has no choices"


def _token_logprobs(choice) -> list[dict] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [{"token": t.token, "logprob": t.logprob, "top": {a.token: a.logprob for a in (t.top_logprobs or [])}}
            for t in content]
