"""The OpenAI Batch API path for work that can wait (half price): write JSONL, upload, create the batch,
poll, collect. The batch id is all a later process needs to collect the answers."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from typing import Any, Final

from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from synthloop.errors import SynthloopError
from synthloop.llm.client import LLMClient, Result, Usage, _scrub, _token_logprobs, validate_answer
from synthloop.llm.pricing import cost_usd

FINAL = ("completed", "failed", "expired", "cancelled")
ENDPOINT: Final = "/v1/chat/completions"  # Final: typed as the literal the SDK expects


def batch_lines(client: LLMClient, requests: Sequence[tuple[str, list[dict]]], schema_model: type[BaseModel],
                **params) -> str:
    """JSONL, one chat-completions request per line, each under its caller-chosen custom_id."""
    # No probing in a batch: a request the server rejects only shows up hours later.
    mode = client.mode or "json_schema"
    ids = [custom_id for custom_id, _ in requests]
    if len(set(ids)) != len(ids):
        raise SynthloopError("batch custom ids must be unique")
    lines = [json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
                         "body": client.request_body(mode, messages, schema_model, params)}, ensure_ascii=False)
             for custom_id, messages in requests]
    return "\n".join(lines) + "\n"


def submit_batch(client: LLMClient, requests: Sequence[tuple[str, list[dict]]], schema_model: type[BaseModel],
                 metadata: dict | None = None, **params) -> str:
    """Upload the requests and start a batch; returns its id (store it: collecting needs nothing else)."""
    data = batch_lines(client, requests, schema_model, **params).encode()
    uploaded = client.sdk.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    extra: dict[str, Any] = {"metadata": metadata} if metadata else {}
    batch = client.sdk.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", **extra)
    return batch.id


def batch_status(client: LLMClient, batch_id: str) -> str:
    return client.sdk.batches.retrieve(batch_id).status


def poll_batch(client: LLMClient, batch_id: str, interval: float = 30.0, timeout: float | None = None) -> str:
    """Wait until the batch is done (or failed, expired, cancelled); returns its last status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = batch_status(client, batch_id)
        if status in FINAL or (deadline is not None and time.monotonic() >= deadline):
            return status
        time.sleep(interval)


def collect_batch(client: LLMClient, batch_id: str, schema_model: type[BaseModel]) -> dict[str, Result] | None:
    """Answers by custom id once the batch is over (None while it runs); each validated, costs at batch price.
    Requests the batch failed come back as Results with `error` set."""
    return batch_results(client, client.sdk.batches.retrieve(batch_id), schema_model)


def batch_results(client: LLMClient, batch, schema_model: type[BaseModel]) -> dict[str, Result] | None:
    """collect_batch for a batch object already retrieved (one status request per poll: a caller that needs
    the status too does not ask twice)."""
    if batch.status not in FINAL:
        return None
    results: dict[str, Result] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if not file_id:
            continue
        for line in client.sdk.files.content(file_id).text.splitlines():
            if line.strip():
                item = json.loads(line)
                results[item["custom_id"]] = _result(client, item, schema_model)
    return results


def _result(client: LLMClient, item: dict, schema_model: type[BaseModel]) -> Result:
    response = item.get("response") or {}
    if item.get("error") or response.get("status_code") != 200:
        body_error = (response.get("body") or {}).get("error") or {}
        message = (item.get("error") or {}).get("message") or body_error.get("message") or ""
        return Result(None, error=_scrub(f"HTTP {response.get('status_code')}: {message}", client.sdk.api_key))
    completion = ChatCompletion.model_validate(response["body"])
    usage = Usage()
    if completion.usage:
        usage.prompt_tokens, usage.completion_tokens = completion.usage.prompt_tokens, completion.usage.completion_tokens
    usage.cost = cost_usd(client.model, usage.prompt_tokens, usage.completion_tokens, batch=True, prices=client.prices)
    if not completion.choices:
        return Result(None, error="empty answer", usage=usage, attempts=1)
    choice = completion.choices[0]
    try:
        value = validate_answer(schema_model, choice.message.content or "")
    except ValidationError as err:
        reason = "truncated answer" if choice.finish_reason == "length" else "answer off the schema"
        return Result(None, error=f"{reason}: {err.errors()[0]['msg']}", usage=usage, attempts=1)
    return Result(value, usage=usage, logprobs=_token_logprobs(choice), attempts=1)
