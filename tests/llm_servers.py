"""Test doubles that speak HTTP: a local OpenAI-compatible server that misbehaves on purpose, and the
real local LLM server started once per session."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def need_local_llm() -> None:
    """Skip (fail under CI) unless xllamacpp and the SmolLM2 model are installed, naming what is missing."""
    import importlib.util

    from helpers import skip_or_fail

    from synthloop.errors import SynthloopError
    from synthloop.llm.serve import find_local_model

    if importlib.util.find_spec("xllamacpp") is None:
        skip_or_fail("xllamacpp (llama.cpp's server, a prebuilt wheel) is not installed: run `make llm-deps`")
    try:
        find_local_model()
    except SynthloopError as err:
        skip_or_fail(str(err))


def local_llm_or_skip(log_file: Path | None = None):
    """Start the real llama.cpp server (xllamacpp, SmolLM2-135M) or skip, naming what is missing."""
    from synthloop.llm.serve import start_local_server

    need_local_llm()
    return start_local_server(port=0, log_file=log_file)


def completion(content: str, finish_reason: str = "stop", prompt_tokens: int = 20, completion_tokens: int = 5,
               logprobs: bool = False) -> dict:
    # One "token" per character keeps the logprobs easy to check: each character has probability 0.9.
    lp = {"content": [{"token": ch, "logprob": math.log(0.9), "bytes": list(ch.encode()),
                       "top_logprobs": [{"token": ch, "logprob": math.log(0.9), "bytes": list(ch.encode())}]}
                      for ch in content]} if logprobs else None
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "fault-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason,
                     "logprobs": lp}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class FaultServer:
    """`requests` records each chat request (path, body, time, auth, headers).
    `script` is a list of behaviours, one per chat request (the last one repeats):
    ("429", retry_after) | ("500",) | ("503",) | ("status", code, message) | ("echo_auth",)
    | ("hang", seconds) | ("content", text) | ("truncated", text) | ("logprobs", text) | ("delay", seconds, text)
    | ("raw", status, body_bytes, content_type) (a proxy's HTML page, a `null` body, ...)
    | a callable taking the request body and returning one of these (answers that depend on the request).

    Batch API: `files` holds uploads, a batch completes on its second poll, `batch_answer(body)` answers each
    request with a completion dict, or (status_code, error_body) for a request that failed."""

    def __init__(self):
        self.script: list = [("content", "{}")]
        self.requests: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_answer: Callable[[dict], dict | tuple] = lambda body: completion('{"label": "spam"}')
        self._lock = threading.Lock()
        self._release = threading.Event()  # set on stop, so hanging handlers end at once
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = self.path.strip("/").split("/")  # v1/batches/<id> or v1/files/<id>/content
                if parts[1] == "batches" and parts[2] in server.batches:
                    batch = server.batches[parts[2]]
                    batch["polls"] += 1
                    if batch["polls"] >= 2 and batch["status"] != "completed":
                        server._finish(batch)
                    self._send(200, server._batch_json(batch))
                elif parts[1] == "files" and parts[2] in server.files:
                    self._send_bytes(200, server.files[parts[2]], "application/jsonl")
                else:
                    self._send(404, {"error": {"message": f"no such object: {self.path}", "type": "invalid_request_error"}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/files"):
                    with server._lock:
                        file_id = f"file-{len(server.files)}"
                        server.files[file_id] = _multipart_file(self.headers.get("Content-Type"), raw)
                    self._send(200, {"id": file_id, "object": "file", "bytes": len(server.files[file_id]),
                                     "created_at": 0, "filename": "requests.jsonl", "purpose": "batch", "status": "processed"})
                    return
                if self.path.endswith("/batches"):
                    body = json.loads(raw)
                    with server._lock:
                        batch = {"id": f"batch-{len(server.batches)}", "input_file_id": body["input_file_id"],
                                 "endpoint": body["endpoint"], "completion_window": body["completion_window"],
                                 "status": "validating", "polls": 0, "output_file_id": None, "error_file_id": None}
                        server.batches[batch["id"]] = batch
                    self._send(200, server._batch_json(batch))
                    return
                body = json.loads(raw or b"{}")
                with server._lock:
                    server.requests.append({"path": self.path, "body": body, "time": time.monotonic(),
                                            "auth": self.headers.get("Authorization"), "headers": dict(self.headers)})
                    step = server.script[min(len(server.requests) - 1, len(server.script) - 1)]
                self._behave(step(body) if callable(step) else step)

            def _behave(self, step: tuple) -> None:
                kind = step[0]
                if kind == "429":
                    self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": str(step[1])})
                elif kind in ("500", "503"):
                    self._send(int(kind), {"error": {"message": "server trouble", "type": "server_error"}})
                elif kind == "status":
                    self._send(step[1], {"error": {"message": step[2], "type": "invalid_request_error"}})
                elif kind == "echo_auth":
                    # A careless server that repeats the credentials it got back in its error message.
                    self._send(401, {"error": {"message": f"bad key: {self.headers.get('Authorization')}", "type": "auth"}})
                elif kind == "hang":
                    server._release.wait(step[1])
                    self._send(200, completion("{}"))
                elif kind == "delay":
                    time.sleep(step[1])
                    self._send(200, completion(step[2]))
                elif kind == "truncated":
                    self._send(200, completion(step[1], finish_reason="length"))
                elif kind == "logprobs":
                    self._send(200, completion(step[1], logprobs=True))
                elif kind == "raw":
                    self._send_bytes(step[1], step[2], step[3])
                else:
                    self._send(200, completion(step[1]))

            def _send(self, status, payload, headers=None):
                self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

            def _send_bytes(self, status, data, content_type, headers=None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _finish(self, batch: dict) -> None:
        out, err = [], []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            request = json.loads(line)
            answer = self.batch_answer(request["body"])
            status, body = answer if isinstance(answer, tuple) else (200, answer)
            item = {"id": "r", "custom_id": request["custom_id"], "error": None,
                    "response": {"status_code": status, "request_id": "q", "body": body}}
            (out if status == 200 else err).append(json.dumps(item))
        with self._lock:
            for key, lines in (("output_file_id", out), ("error_file_id", err)):
                if lines:
                    file_id = f"file-{len(self.files)}"
                    self.files[file_id] = ("\n".join(lines) + "\n").encode()
                    batch[key] = file_id
        batch["status"] = "completed"

    @staticmethod
    def _batch_json(batch: dict) -> dict:
        return {"id": batch["id"], "object": "batch", "endpoint": batch["endpoint"], "input_file_id": batch["input_file_id"],
                "completion_window": batch["completion_window"], "status": batch["status"], "created_at": 0,
                "output_file_id": batch["output_file_id"], "error_file_id": batch["error_file_id"]}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reset(self, *script) -> None:
        self.script = list(script)
        self.requests = []

    def stop(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _multipart_file(content_type: str, raw: bytes) -> bytes:
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True)
    raise ValueError("no file part in the upload")
