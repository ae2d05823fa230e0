"""One client over the openai SDK: structured output validated by pydantic, retries, cache, usage.

HTTP failures (429 with Retry-After, 5xx, timeouts) are retried by the SDK's own backoff
(`max_retries`); this module only retries answers that fail validation (truncated or off-schema).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import openai
from pydantic import BaseModel, ValidationError

from synthloop.errors import SynthloopError
from synthloop.llm.pricing import cost_usd

MODES = ("json_schema", "json_object_schema", "prompt")
LOCAL_KEY = "not-needed"  # local OpenAI-compatible servers accept any key


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency: float = 0.0


@dataclass
class Result:
    value: BaseModel | None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    logprobs: list[dict] | None = None
    cached: bool = False
    attempts: int = 0


class DictCache:
    """In-memory stand-in for the store's cache (`get`/`put`)."""

    def __init__(self):
        self.data: dict[str, dict] = {}

    def get(self, key: str) -> dict | None:
        return self.data.get(key)

    def put(self, key: str, value: dict) -> None:
        self.data[key] = value


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret and len(secret) > 3 else text


class LLMClient:
    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 4, concurrency: int = 4, response_format: str = "auto", cache=None,
                 prices: dict | None = None, validation_retries: int = 2):
        if response_format not in ("auto", *MODES):
            raise SynthloopError(f"response_format must be auto or one of {', '.join(MODES)}, not {response_format!r}")
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if self.base_url is None:
                raise SynthloopError("no API key: set OPENAI_API_KEY in the environment, or point [llm] base_url at a local server")
            key = LOCAL_KEY
        self._key = key
        self.mode = response_format if response_format != "auto" else (
            "json_schema" if self.base_url is None or "api.openai.com" in self.base_url else None)
        self.concurrency = concurrency
        self.cache = cache
        self.prices = prices
        self.validation_retries = validation_retries
        self.sdk = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=max_retries)

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={self.base_url!r}, mode={self.mode!r})"

    # requests -----------------------------------------------------------------------------------
    def response_format_for(self, mode: str, schema_model: type[BaseModel]) -> dict | None:
        schema = schema_model.model_json_schema()
        if mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": schema_model.__name__, "schema": schema, "strict": False}}
        if mode == "json_object_schema":
            return {"type": "json_object", "schema": schema}
        return None

    def request_messages(self, mode: str, messages: list[dict], schema_model: type[BaseModel]) -> list[dict]:
        if mode != "prompt":
            return messages
        hint = "Reply with only a JSON object matching this JSON schema:\n" + json.dumps(schema_model.model_json_schema())
        return [{"role": "system", "content": hint}, *messages]

    def cache_key(self, messages: list[dict], schema_model: type[BaseModel], params: dict) -> str:
        blob = json.dumps({"model": self.model, "messages": messages, "params": params,
                           "schema": schema_model.model_json_schema()}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _call(self, mode: str, messages: list[dict], schema_model: type[BaseModel], params: dict):
        kwargs = dict(params)
        if kwargs.pop("logprobs", False):
            kwargs["logprobs"] = True
        fmt = self.response_format_for(mode, schema_model)
        if fmt is not None:
            kwargs["response_format"] = fmt
        # While probing which format the server takes, a rejection must come back at once, not after retries.
        sdk = self.sdk.with_options(max_retries=0) if self.mode is None else self.sdk
        return sdk.chat.completions.create(model=self.model, messages=self.request_messages(mode, messages, schema_model), **kwargs)

    def _rejects_format(self, err: openai.APIStatusError) -> bool:
        # llama.cpp answers json_schema with HTTP 500; other servers with 400/422 naming response_format.
        text = str(getattr(err, "message", "")) + str(getattr(err, "body", ""))
        return err.status_code in (400, 422, 500) and ("response_format" in text or "json_schema" in text or "schema" in text)

    def complete_json(self, messages: list[dict], schema_model: type[BaseModel], **params) -> Result:
        key = self.cache_key(messages, schema_model, params)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return Result(schema_model.model_validate(hit["value"]), logprobs=hit.get("logprobs"), cached=True)
        usage, errors, attempts = Usage(), [], 0
        for _ in range(self.validation_retries + 1):
            attempts += 1
            start = time.perf_counter()
            try:
                response = self._call(self.mode or "json_schema", messages, schema_model, params)
            except openai.APIStatusError as err:
                if self.mode is None and self._rejects_format(err):
                    self.mode = "json_object_schema"
                    return self.complete_json(messages, schema_model, **params)
                if self.mode == "json_object_schema" and err.status_code in (400, 422) and self._rejects_format(err):
                    self.mode = "prompt"
                    return self.complete_json(messages, schema_model, **params)
                return self._failed(f"HTTP {err.status_code}: {err.message}", usage, attempts)
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                return self._failed(f"{type(err).__name__}: {err}", usage, attempts)
            finally:
                usage.latency += time.perf_counter() - start
            if self.mode is None:
                self.mode = "json_schema"
            if response.usage:
                usage.prompt_tokens += response.usage.prompt_tokens or 0
                usage.completion_tokens += response.usage.completion_tokens or 0
            usage.cost = cost_usd(self.model, usage.prompt_tokens, usage.completion_tokens, prices=self.prices)
            choice = response.choices[0]
            content = choice.message.content or ""
            try:
                value = schema_model.model_validate_json(content)
            except ValidationError as err:
                reason = "truncated answer" if choice.finish_reason == "length" else "answer off the schema"
                errors.append(f"{reason}: {err.errors()[0]['msg']}")
                continue
            logprobs = None
            if getattr(choice, "logprobs", None) and choice.logprobs.content:
                logprobs = [{"token": t.token, "logprob": t.logprob} for t in choice.logprobs.content]
            if self.cache is not None:
                self.cache.put(key, {"value": value.model_dump(mode="json"), "logprobs": logprobs})
            return Result(value, usage=usage, logprobs=logprobs, attempts=attempts)
        return self._failed("; ".join(errors), usage, attempts)

    def _failed(self, error: str, usage: Usage, attempts: int) -> Result:
        return Result(None, error=_scrub(error, self._key), usage=usage, attempts=attempts)

    def complete_json_many(self, requests: Sequence[list[dict]], schema_model: type[BaseModel],
                           per_request: Sequence[dict] | None = None, **params) -> list[Result]:
        """Many requests, at most `concurrency` at a time, answers in the order asked. `per_request`
        holds extra parameters for each request (e.g. a seed)."""
        if not requests:
            return []
        extras = list(per_request) if per_request is not None else [{}] * len(requests)
        if self.mode is None:
            # Settle the response format on one request before fanning out.
            first = self.complete_json(requests[0], schema_model, **params, **extras[0])
            return [first] + self.complete_json_many(requests[1:], schema_model, extras[1:], **params)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda pair: self.complete_json(pair[0], schema_model, **params, **pair[1]),
                                 zip(requests, extras)))
