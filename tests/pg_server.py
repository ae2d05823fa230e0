"""A real PostgreSQL server for the tests: Debian's binaries, a throwaway cluster in a temp dir, a free port.

initdb and the server refuse to run as root, so under root the cluster belongs to the `postgres` user (made by
Debian's package) and every server command runs through `runuser -u postgres`. The superuser logs in with a
password over TCP (scram-sha-256), as a team's server would, so the tests see real URLs with secrets in them.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 120.0  # seconds: under load on a 2-core machine a fresh cluster can take a while


def find_bindir() -> Path | None:
    """The directory with initdb and pg_ctl: Debian's /usr/lib/postgresql/<version>/bin (newest), else $PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    def __init__(self, bindir: Path, log_file: Path | None = None):
        self.bindir = bindir
        self.user = "synthloop"
        self.password = "pw-" + secrets.token_hex(8)  # the tests check that no output ever shows it
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="synthloop-pg-"))
        self.data = self.base / "data"
        self.log_file = log_file or self.base / "server.log"
        self._databases = 0

    def _run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, **kwargs)

    def start(self) -> PgServer:
        if self.as_postgres:
            info = pwd.getpwnam("postgres")
            os.chown(self.base, info.pw_uid, info.pw_gid)
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.as_postgres:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--pwfile", str(pwfile),
                  "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync",
                  # A language collation, as on a team's server (not C): the store must not depend on it.
                  "--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en-US")
        pwfile.unlink()
        # fsync off: a test cluster need not survive a power cut, and fsync is what makes CI disks slow.
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "server.log"),
                  "-o", options, "-w", "-t", str(int(START_TIMEOUT)), "start")
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not accept connections on port {self.port}: {self.server_log()}")

    def server_log(self) -> str:
        path = self.base / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no server log)"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its URL. One per test keeps tests apart on one server."""
        import psycopg

        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if self.data.exists():
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        finally:
            if self.log_file != self.base / "server.log" and (self.base / "server.log").exists():
                shutil.copy(self.base / "server.log", self.log_file)
            shutil.rmtree(self.base, ignore_errors=True)


def pg_server_or_reason(log_file: Path | None = None) -> tuple[PgServer | None, str]:
    """A started server, or None and why not (the caller skips, or fails under CI)."""
    bindir = find_bindir()
    if bindir is None:
        return None, "PostgreSQL is not installed (apt-get install postgresql; `make test` does it)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "psycopg is not installed: pip install 'synthloop[postgres]'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no `postgres` user to run the server as"
    server = PgServer(bindir, log_file)
    try:
        return server.start(), ""
    except (subprocess.CalledProcessError, RuntimeError, OSError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        server.stop()
        return None, f"PostgreSQL did not start: {detail.strip()[-500:]}"
