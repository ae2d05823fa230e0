"""The real local argilla-server (argilla_setup/launch.py) as a subprocess, for tests.

    with start_argilla_server(tmp_path, annotators=["alice"]) as server:
        client = argilla.Argilla(api_url=server.url, api_key=server.api_key)

The server runs from its own venv (argilla_setup/.venv, made by argilla_setup/install.sh); tests skip
with `argilla_server_skip_reason()` when it is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "argilla_setup"
SERVER_PYTHON = SETUP / ".venv" / "bin" / "python"
READY_TIMEOUT = 90.0


class ArgillaServerError(RuntimeError):
    pass


def argilla_server_skip_reason() -> str | None:
    if not SERVER_PYTHON.exists():
        return f"{SERVER_PYTHON} not found: run `make argilla-install` (argilla_setup/install.sh) first"
    return None


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)


class ArgillaServer:
    """A launched server. `.url`, `.api_key`, `.username`, `.password` describe the owner; `.annotators`
    maps each annotator made with `annotators=` to its api key. `restart()` keeps the data dir and port.
    `env` overrides the launcher's environment (e.g. a PATH without redis-server)."""

    def __init__(self, data_dir: Path, annotators: list[str] | tuple = (), port: int = 0,
                 timeout: float = READY_TIMEOUT, env: dict[str, str] | None = None):
        self.data_dir = Path(data_dir)
        self.extra_env = dict(env or {})
        self.annotator_names = list(annotators)
        self.port = port
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.url = self.api_key = self.username = self.password = None
        self.annotators: dict[str, str] = {}
        self.starts = 0

    # ----------------------------------------------------------------------------------------- life cycle
    def start(self) -> ArgillaServer:
        if self.proc is not None and self.proc.poll() is None:
            raise ArgillaServerError("server already running")
        self.starts += 1
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path = logs / f"launch-{self.starts}.out"
        self.stderr_path = logs / f"launch-{self.starts}.err"
        cmd = [str(SERVER_PYTHON), str(SETUP / "launch.py"), "--port", str(self.port),
               "--data-dir", str(self.data_dir)]
        if self.annotator_names:
            cmd += ["--annotators", ",".join(self.annotator_names)]
        # The launcher reads ARGILLA_* defaults from the environment; tests want its documented defaults.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")} | self.extra_env
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # Own session: a Ctrl-C meant for pytest must not reach the server half-way through a test.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            text = self.stdout_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("ARGILLA_USER "):
                    user = _fields(line)
                    if user.get("role") == "annotator":
                        self.annotators[user["username"]] = user["api_key"]
                elif line.startswith("ARGILLA_READY "):
                    ready = _fields(line)
                    # A secret the environment set is printed as its variable's name, never its value.
                    secret = {f"${k}": v for k, v in self.extra_env.items()}
                    self.url, self.api_key = ready["url"], secret.get(ready["api_key"], ready["api_key"])
                    self.username, self.password = ready["username"], secret.get(ready["password"], ready["password"])
                    self.port = int(self.url.rsplit(":", 1)[1])  # restarts come back on the same URL
                    return
            code = self.proc.poll()
            if code is not None:
                raise ArgillaServerError(f"argilla server exited with {code} before it was ready{self._stderr_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ArgillaServerError(f"argilla server not ready after {self.timeout:.0f} s{self._stderr_tail()}")
            time.sleep(0.1)

    def _stderr_tail(self, chars: int = 4000) -> str:
        try:
            return "\n--- server stderr (tail) ---\n" + self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (or `sig`, e.g. SIGINT as a Ctrl-C): the launcher stops uvicorn, its job worker and Redis.
        Returns the launcher's exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ArgillaServerError(f"argilla server ignored {signal.Signals(sig).name} for {timeout:.0f} s"
                                     f"{self._stderr_tail()}") from None

    def kill(self) -> None:
        """SIGKILL, for crash tests: nothing is cleaned up (its Redis child dies with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> ArgillaServer:
        self.stop()
        return self.start()

    def children(self, name: str | None = None) -> list[int]:
        """Pids of the launcher's child processes (named `name`, e.g. "redis-server"), from /proc."""
        if self.proc is None:
            return []
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:  # the process ended while we looked
                continue
            comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
            if int(rest[1]) == self.proc.pid and name in (None, comm):
                pids.append(int(stat.parent.name))
        return pids

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> ArgillaServer:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.kill()


def start_argilla_server(tmp_dir: Path, annotators: list[str] | tuple = (), port: int = 0,
                         timeout: float = READY_TIMEOUT, env: dict[str, str] | None = None) -> ArgillaServer:
    """Start a server with its data (SQLite, Redis dir, logs) under tmp_dir/argilla and wait until it answers."""
    server = ArgillaServer(Path(tmp_dir) / "argilla", annotators=annotators, port=port, timeout=timeout, env=env)
    return server.start()


def process_alive(pid: int) -> bool:
    """Running, not gone and not a zombie waiting to be reaped."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2:].split()[0] != "Z"
