"""The OpenAI Batch API path for work that can wait (half price): write JSONL, upload, create the batch,
poll, collect. The batch id is all a later process needs to collect the answers."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError

from synthloop.llm.client import LLMClient, Result, Usage
from synthloop.llm.pricing import cost_usd

DONE = ("completed",)
FINAL = ("completed", "failed", "expired", "cancelled")


def batch_lines(client: LLMClient, requests: Sequence[tuple[str, list[dict]]], schema_model: type[BaseModel],
                **params) -> str:
    mode = client.mode or "json_schema"
    lines = []
    for custom_id, messages in requests:
        body = {"model": client.model, "messages": client.request_messages(mode, messages, schema_model), **params}
        fmt = client.response_format_for(mode, schema_model)
        if fmt is not None:
            body["response_format"] = fmt
        lines.append(json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return "\n".join(lines) + "\n"


def submit_batch(client: LLMClient, requests: Sequence[tuple[str, list[dict]]], schema_model: type[BaseModel],
                 metadata: dict | None = None, **params) -> str:
    """Upload the requests and start a batch; returns its id."""
    data = batch_lines(client, requests, schema_model, **params).encode()
    uploaded = client.sdk.files.create(file=("requests.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                       completion_window="24h", metadata=metadata or None)
    return batch.id


def batch_status(client: LLMClient, batch_id: str) -> str:
    return client.sdk.batches.retrieve(batch_id).status


def collect_batch(client: LLMClient, batch_id: str, schema_model: type[BaseModel]) -> dict[str, Result] | None:
    """Answers by custom id once the batch is done (None while it runs); each validated, costs at batch price."""
    batch = client.sdk.batches.retrieve(batch_id)
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
        message = (item.get("error") or {}).get("message") or f"HTTP {response.get('status_code')}"
        return Result(None, error=message)
    body = response["body"]
    tokens = body.get("usage") or {}
    usage = Usage(tokens.get("prompt_tokens", 0), tokens.get("completion_tokens", 0))
    usage.cost = cost_usd(client.model, usage.prompt_tokens, usage.completion_tokens, batch=True, prices=client.prices)
    choice = body["choices"][0]
    try:
        value = schema_model.model_validate_json(choice["message"]["content"] or "")
    except ValidationError as err:
        return Result(None, error=f"answer off the schema: {err.errors()[0]['msg']}", usage=usage)
    return Result(value, usage=usage)
