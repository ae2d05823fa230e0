"""Test doubles that speak HTTP: a local OpenAI-compatible server that misbehaves on purpose."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(content: str, finish_reason: str = "stop", prompt_tokens: int = 20, completion_tokens: int = 5) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "fault-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason,
                     "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class FaultServer:
    """`script` is a list of behaviours, one per request (the last one repeats):
    ("429", retry_after) | ("500",) | ("503",) | ("hang", seconds) | ("content", text) | ("truncated", text)."""

    def __init__(self):
        self.script: list[tuple] = [("content", "{}")]
        self.requests: list[dict] = []
        # Batch API: uploaded files, batches (done on the second poll), and how each request is answered.
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_answer = lambda body: completion('{"label": "spam"}')
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = self.path.strip("/").split("/")  # v1/batches/<id> or v1/files/<id>/content
                if parts[1] == "batches":
                    batch = server.batches[parts[2]]
                    batch["polls"] += 1
                    if batch["polls"] >= 2 and batch["status"] != "completed":
                        server._finish(batch)
                    self._send(200, server._batch_json(batch))
                else:
                    data = server.files[parts[2]]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/jsonl")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/files"):
                    file_id = f"file-{len(server.files)}"
                    server.files[file_id] = _multipart_file(self.headers.get("Content-Type"), raw)
                    self._send(200, {"id": file_id, "object": "file", "bytes": len(server.files[file_id]),
                                     "created_at": 0, "filename": "requests.jsonl", "purpose": "batch", "status": "processed"})
                    return
                if self.path.endswith("/batches"):
                    body = json.loads(raw)
                    batch = {"id": f"batch-{len(server.batches)}", "input_file_id": body["input_file_id"],
                             "endpoint": body["endpoint"], "completion_window": body["completion_window"],
                             "status": "validating", "polls": 0, "output_file_id": None}
                    server.batches[batch["id"]] = batch
                    self._send(200, server._batch_json(batch))
                    return
                body = json.loads(raw or b"{}")
                server.requests.append({"path": self.path, "body": body, "time": time.monotonic(),
                                        "auth": self.headers.get("Authorization")})
                step = server.script[min(len(server.requests) - 1, len(server.script) - 1)]
                kind = step[0]
                if kind == "429":
                    self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"Retry-After": str(step[1])})
                elif kind in ("500", "503"):
                    self._send(int(kind), {"error": {"message": "server trouble", "type": "server_error"}})
                elif kind == "hang":
                    time.sleep(step[1])
                    self._send(200, completion("{}"))
                elif kind == "truncated":
                    self._send(200, completion(step[1], finish_reason="length"))
                else:
                    self._send(200, completion(step[1]))

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
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
        lines = []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            request = json.loads(line)
            lines.append(json.dumps({"id": "r", "custom_id": request["custom_id"], "error": None,
                                     "response": {"status_code": 200, "request_id": "q", "body": self.batch_answer(request["body"])}}))
        out_id = f"file-{len(self.files)}"
        self.files[out_id] = ("\n".join(lines) + "\n").encode()
        batch.update(status="completed", output_file_id=out_id)

    @staticmethod
    def _batch_json(batch: dict) -> dict:
        return {"id": batch["id"], "object": "batch", "endpoint": batch["endpoint"], "input_file_id": batch["input_file_id"],
                "completion_window": batch["completion_window"], "status": batch["status"], "created_at": 0,
                "output_file_id": batch["output_file_id"], "error_file_id": None}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reset(self, *script: tuple) -> None:
        self.script = list(script)
        self.requests = []

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _multipart_file(content_type: str, raw: bytes) -> bytes:
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True)
    raise ValueError("no file part in the upload")
