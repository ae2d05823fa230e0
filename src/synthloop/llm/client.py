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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import openai
from pydantic import BaseModel, ValidationError

from synthloop.errors import SynthloopError
from synthloop.llm.pricing import cost_usd, is_priced

MODES = ("json_schema", "json_object_schema", "prompt")
LOCAL_KEY = "not-needed"  # local OpenAI-compatible servers accept any key
OPENAI_HOST = "api.openai.com"

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
    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 4, concurrency: int = 4, response_format: str = "auto", cache=None,
                 prices: dict | None = None, validation_retries: int = 2, api_key_env: str = "OPENAI_API_KEY",
                 base_url_env: str = "OPENAI_BASE_URL"):
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
        # None until the first answer settles it: other servers are probed, json_schema first.
        self.mode = response_format if response_format != "auto" else ("json_schema" if is_openai else None)
        self.concurrency = max(1, concurrency)
        self.cache = cache
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

    def _send(self, messages: list[dict], schema_model: type[BaseModel], params: dict):
        """One answer from the server, settling the response format first when it is not known yet."""
        if self.mode is None:
            try:
                response = self._call("json_schema", messages, schema_model, params, probing=True)
                self.mode = "json_schema"
                return response
            except openai.APIStatusError as err:
                # Anything not about the format (a 429, a 503) is asked again below, with the SDK's retries.
                if self._rejects_format(err):
                    log.info("%s rejects response_format json_schema; using json_object with a schema", self.base_url)
                    self.mode = "json_object_schema"
            except (openai.APITimeoutError, openai.APIConnectionError):
                pass
        mode = self.mode or "json_schema"
        try:
            response = self._call(mode, messages, schema_model, params, probing=False)
            self.mode = self.mode or mode
            return response
        except openai.APIStatusError as err:
            if mode == "json_object_schema" and err.status_code in (400, 422) and self._rejects_format(err):
                log.info("%s rejects response_format json_object; putting the schema in the prompt", self.base_url)
                self.mode = "prompt"
                return self._call("prompt", messages, schema_model, params, probing=False)
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
            finally:
                usage.latency += time.perf_counter() - start
            if response.usage:
                usage.prompt_tokens += response.usage.prompt_tokens or 0
                usage.completion_tokens += response.usage.completion_tokens or 0
            usage.cost = cost_usd(self.model, usage.prompt_tokens, usage.completion_tokens, prices=self.prices)
            if not response.choices:
                errors.append("empty answer")
                continue
            choice = response.choices[0]
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
                           per_request: Sequence[dict] | None = None, **params) -> list[Result]:
        """Many requests, at most `concurrency` at a time, answers in the order asked. `per_request`
        holds extra parameters for each request (e.g. a seed)."""
        jobs = list(zip(requests, per_request if per_request is not None else [{}] * len(requests)))
        results: list[Result] = []
        # Settle the response format on the first requests, one at a time, before fanning out.
        while jobs and self.mode is None:
            messages, extra = jobs.pop(0)
            results.append(self.complete_json(messages, schema_model, **params, **extra))
        if jobs:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                results += pool.map(lambda job: self.complete_json(job[0], schema_model, **params, **job[1]), jobs)
        return results


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


def _token_logprobs(choice) -> list[dict] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [{"token": t.token, "logprob": t.logprob, "top": {a.token: a.logprob for a in (t.top_logprobs or [])}}
            for t in content]
