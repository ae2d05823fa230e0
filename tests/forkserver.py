"""`python -m synthloop ...` for tests, forked from a process that has already imported the heavy third-party
libraries, instead of a new Python that imports them again.

About 240 CLI processes run in `make test`; each spent 1-1.5 s of CPU importing scikit-learn (with scipy and
pandas), SQLAlchemy and pyarrow before doing anything (python -X importtime, idle 2-core machine). A child forked
from this server finds them imported. It is still its own process: its own pid, working directory, environment,
stdin/stdout/stderr files and exit status, and synthloop itself is imported fresh in it (only third-party
modules are preloaded, none of which reads the environment or the working directory at import), so a test sees
what a user's process does. Tests that need a process of their own in other ways (killed, timed, run beside
another, a fresh interpreter's import time) keep using subprocess.

`run_synthloop` is the drop-in for `subprocess.run([sys.executable, "-m", "synthloop", *args],
capture_output=True, text=True, ...)`. SYNTHLOOP_TEST_FORKSERVER=0 runs every call as that plain subprocess.
Each pytest process (each xdist worker) starts one server on first use and stops it at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PRELOAD = ("numpy", "scipy.sparse", "scipy.stats", "scipy.optimize", "pandas", "pyarrow", "pyarrow.parquet",
           "pyarrow.csv", "sklearn.base", "sklearn.linear_model", "sklearn.calibration", "sklearn.metrics",
           "sklearn.feature_extraction.text", "sklearn.cluster", "sklearn.preprocessing", "sklearn.model_selection",
           "sqlalchemy", "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql", "joblib", "modAL",
           "rich.console", "rich.table", "rich.progress", "typer", "pydantic", "tomli_w", "psutil")


# The server side -------------------------------------------------------------------------------------------

def _os_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _become(request: dict, fds: list[int]) -> None:
    """In the forked process: become the requested `python -m synthloop` run, on the caller's stdin, stdout and
    stderr (`fds`, passed over the socket). It never returns: the run's SystemExit, or its uncaught exception,
    unwinds to the top and the interpreter exits as `python -m synthloop` does (atexit handlers, closing what is
    open: SQLite checkpoints its write-ahead log when the last connection closes, and tests read the files)."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    # As `python -m synthloop` sets them: argv[0] the module's file, the working directory first on the path.
    import importlib.util
    import runpy

    sys.argv = [importlib.util.find_spec("synthloop.__main__").origin, *request["args"]]
    sys.path[0] = request["cwd"]
    runpy.run_module("synthloop", run_name="__main__", alter_sys=True)
    sys.exit(0)


def _start(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In a forked waiter: fork the run, tell the caller its pid, wait for it and send its exit status
    (negative: the signal that killed it, as subprocess reports it)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server ignores it; waiting, and the run's own children, need it
    pid = os.fork()
    if pid == 0:
        conn.close()
        _become(request, fds)
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(f"{pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    finally:
        os._exit(0)


def serve(path: str) -> None:
    # No threads may run when the server forks. These keep the preloaded libraries from starting any: one BLAS
    # thread (as `make test` sets for every test anyway; outside it, a forked run has one BLAS thread where a new
    # Python would start one per core), and no jemalloc purging thread in pyarrow.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ["JE_ARROW_MALLOC_CONF"] = "background_thread:false"
    preloaded = []
    for name in PRELOAD:
        try:
            __import__(name)
            preloaded.append(name)
        except ImportError:
            pass
    if _os_threads() > 1:  # forking a process with threads is unsafe: say so, and let the client fall back
        print(f"refused: {_os_threads()} threads after preloading", flush=True)
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children report their own status; the kernel reaps them
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    print(f"ready {len(preloaded)} modules", flush=True)
    import select

    while True:
        # stdin is a pipe whose other end only the pytest process holds: at its end (pytest exited, or was
        # killed) the server exits too, instead of waiting on its socket for ever.
        ready, _, _ = select.select([server, sys.stdin], [], [])
        if sys.stdin in ready:
            return
        conn, _ = server.accept()
        with conn:
            data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)  # the caller's stdin, stdout, stderr
            while data and not data.endswith(b"\n"):
                part = conn.recv(1 << 20)
                if not part:
                    break
                data += part
            if len(fds) == 3 and data.endswith(b"\n"):
                sys.stdout.flush()
                sys.stderr.flush()
                if os.fork() == 0:
                    server.close()
                    _start(conn, json.loads(data), fds)
            for fd in fds:
                os.close(fd)


# The client side -------------------------------------------------------------------------------------------

def startup_settings(env: dict) -> dict:
    """The variables a process reads as it starts (the interpreter's PYTHON*, the loader's, thread counts):
    a call whose values differ from the server's cannot be forked from it and runs as a plain subprocess."""
    return {k: v for k, v in env.items() if k.startswith(("PYTHON", "LD_", "OPENBLAS_", "OMP_", "MKL_"))}


def run_forked(path: str, args: list[str], cwd: str, env: dict, fds: tuple[int, int, int], timeout: float | None,
               on_pid=None) -> int:
    """Run `python -m synthloop *args` forked by the server at `path`, on these stdin/stdout/stderr; returns its
    exit status. `on_pid(pid)` is called once the run has started."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.settimeout(timeout)
        request = (json.dumps({"args": args, "cwd": cwd, "env": env}) + "\n").encode()
        socket.send_fds(conn, [request], list(fds))
        reader = conn.makefile("r")
        pid = int(reader.readline())
        if on_pid:
            on_pid(pid)
        try:
            status = reader.readline()
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired([sys.executable, "-m", "synthloop", *args], timeout or 0) from None
    return int(status) if status.strip() else -signal.SIGKILL  # the waiter itself was killed


class _Server:
    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="synthloop-forkserver-")
        self.path = os.path.join(self.folder, "socket")
        self.proc = subprocess.Popen([sys.executable, __file__, self.path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=self.folder)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        self.ok = line.startswith("ready")
        self.settings = startup_settings(dict(os.environ))
        Path(self.path + ".json").write_text(json.dumps(self.settings))
        atexit.register(self.stop)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)

    def run_captured(self, args: list[str], cwd: str, env: dict, input: str | None, timeout: float | None):
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as stdin:
            if input is not None:
                stdin.write(input.encode())
                stdin.seek(0)
            with open(os.devnull, "rb") as null:
                code = run_forked(self.path, args, cwd, env, (null.fileno() if input is None else stdin.fileno(),
                                                              out.fileno(), err.fileno()), timeout)
            texts = []
            for file in (out, err):
                file.seek(0)
                # As text=True decodes: UTF-8 here, universal newlines.
                texts.append(file.read().decode().replace("\r\n", "\n").replace("\r", "\n"))
        return subprocess.CompletedProcess([sys.executable, "-m", "synthloop", *args], code, *texts)


_server: _Server | None = None


def _get_server() -> _Server | None:
    global _server
    if os.environ.get("SYNTHLOOP_TEST_FORKSERVER", "1") == "0":
        return None
    if _server is None:
        _server = _Server()
    return _server if _server.ok else None


def run_synthloop(*args, cwd=None, env: dict | None = None, input: str | None = None, timeout: float | None = None,
                  check: bool = False) -> subprocess.CompletedProcess:
    """`python -m synthloop *args` with its output captured as text; forked from the server when it runs."""
    argv = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    server = _get_server()
    if server is None or startup_settings(env) != server.settings:
        proc = subprocess.run([sys.executable, "-m", "synthloop", *argv], cwd=cwd, env=env, input=input,
                              capture_output=True, text=True, timeout=timeout)
    else:
        proc = server.run_captured(argv, str(Path(cwd or os.getcwd()).resolve()), env, input, timeout)
    if check:
        proc.check_returncode()
    return proc


SOCKET_ENV = "SYNTHLOOP_TEST_FORKSERVER_SOCKET"


def shim_args() -> list[str]:
    """For a `synthloop` shim (tests/test_docs.py): the command that runs the CLI through this process's server, on
    the shim's own stdin/stdout/stderr, given environment() (its socket)."""
    return [sys.executable, __file__, "client"]


def shim_command() -> str | None:
    """shim_args() as a shell command line; None without a server."""
    return " ".join(f'"{arg}"' for arg in shim_args()) if _get_server() else None


def environment() -> dict[str, str]:
    """What a shim's environment needs for shim_command()."""
    server = _get_server()
    return {SOCKET_ENV: server.path} if server else {}


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _client(args: list[str]) -> None:
    """The shim: the run is this process as far as the shell knows, so a signal sent to it (`kill $PID` of a
    backgrounded `synthloop serve`) goes on to the run, and its exit status, or the signal that ended it, is this
    process's."""
    path = os.environ[SOCKET_ENV]
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    if startup_settings(env) != json.loads(Path(path + ".json").read_text()):
        os.execve(sys.executable, [sys.executable, "-m", "synthloop", *args], env)
    run_pid: list[int] = []

    def forward(signum, _frame):
        os.kill(run_pid[0], signum)

    def started(pid: int) -> None:
        run_pid.append(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)  # what arrived meanwhile is delivered now

    # Held until the run's pid is known, then delivered to forward().
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    for signum in FORWARDED:
        signal.signal(signum, forward)
    code = run_forked(path, args, os.getcwd(), env, (0, 1, 2), None, on_pid=started)
    if code < 0:  # ended by a signal: end this process by it too, as the shell expects
        for signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        _client(sys.argv[2:])
    serve(sys.argv[1])
