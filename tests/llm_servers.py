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
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
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

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reset(self, *script: tuple) -> None:
        self.script = list(script)
        self.requests = []

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
