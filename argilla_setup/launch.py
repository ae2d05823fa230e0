"""Run a real argilla-server locally: SQLite, the in-memory search engine, Redis as a child process.

Run it with argilla_setup/.venv/bin/python (see install.sh). Once the server answers, it prints one line
for each user it made sure of and then

    ARGILLA_READY url=http://127.0.0.1:6900 username=argilla password=12345678 api_key=argilla.apikey

on stdout. SIGTERM/SIGINT stop uvicorn, the job worker and Redis, in that order. The default credentials
are for local development only.

Why a launcher and not `python -m argilla_server start`: the search engine must be registered in the
same process as the app and its background jobs (they look it up by name), and the in-memory index
must be rebuilt from the database before the first request.
"""

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOG = logging.getLogger("argilla_setup")


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default=env("ARGILLA_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("ARGILLA_PORT", "6900")), help="0 picks a free port")
    p.add_argument("--data-dir", default=env("ARGILLA_DATA_DIR", str(HERE / "data")))
    p.add_argument("--username", default=env("ARGILLA_USERNAME", "argilla"))
    p.add_argument("--password", default=env("ARGILLA_PASSWORD", "12345678"))
    p.add_argument("--api-key", default=env("ARGILLA_API_KEY", "argilla.apikey"))
    # synthloop's own default ([argilla] workspace): annotators made here see the datasets synthloop pushes.
    p.add_argument("--workspace", default=env("ARGILLA_WORKSPACE", "synthloop"), help="made if missing; users join it")
    p.add_argument(
        "--annotators",
        default=env("ARGILLA_ANNOTATORS", ""),
        help="comma-separated annotator usernames to create (same password as the owner)",
    )
    p.add_argument("--redis-url", default=env("ARGILLA_LOCAL_REDIS_URL", ""), help="use this Redis, start none")
    p.add_argument("--log-level", default=env("ARGILLA_LOG_LEVEL", "warning"))
    args = p.parse_args(argv)
    if len(args.password) < 8:
        p.error("--password needs at least 8 characters (argilla-server's rule)")
    args.annotators = [a.strip() for a in args.annotators.split(",") if a.strip()]
    return args


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Linux prctl(PR_SET_PDEATHSIG): Redis goes away even when the launcher is SIGKILLed.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class RedisChild:
    def __init__(self, data_dir: Path):
        self.dir = data_dir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port("127.0.0.1")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = open(self.dir / "redis.log", "ab")
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.dir), "--daemonize", "no"]  # fmt: skip
        # Own session: a Ctrl-C (or `timeout`) aimed at the launcher's process group must not stop Redis
        # before the server and the job worker are done with it.
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, start_new_session=True
        )

    def wait_ready(self, timeout: float = 15) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.dir / 'redis.log'}")
            with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def use_fakeredis() -> str:
    """Make every Redis client in this process talk to one in-process fake server.

    Must run before argilla_server.jobs.queues is imported: it connects at import time."""
    import fakeredis
    import redis

    server = fakeredis.FakeServer()
    redis.from_url = lambda url, **kw: fakeredis.FakeRedis(server=server, **kw)
    redis.Redis.from_url = classmethod(lambda cls, url, **kw: fakeredis.FakeRedis(server=server, **kw))
    return "redis://fakeredis/0"


def configure_environment(args, data_dir: Path, redis_url: str) -> None:
    # argilla_server reads its settings from ARGILLA_* at import time, so this runs before any import.
    secret_file = data_dir / "auth_secret_key"
    if not secret_file.exists():  # kept across restarts so browser sessions survive them
        secret_file.write_text(secrets.token_hex(32))
    os.environ.update(
        ARGILLA_HOME_PATH=str(data_dir),
        ARGILLA_DATABASE_URL=f"sqlite+aiosqlite:///{data_dir / 'argilla.db'}",
        ARGILLA_REDIS_URL=redis_url,
        ARGILLA_SEARCH_ENGINE="inmemory",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    os.environ.setdefault("ARGILLA_AUTH_SECRET_KEY", secret_file.read_text().strip())
    # The server copies its web UI into a fresh temp dir on every start; keep those under data_dir.
    tmp = data_dir / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tempfile.tempdir = str(tmp)


def migrate() -> None:
    from alembic import command
    from alembic.config import Config
    from argilla_server.database import ALEMBIC_CONFIG_FILE

    # A Config without a file: alembic.ini's logging section would otherwise disable the server's loggers.
    config = Config()
    config.set_main_option("script_location", str(Path(ALEMBIC_CONFIG_FILE).parent / "alembic"))
    command.upgrade(config, "head")


async def ensure_users(args) -> list:
    """Owner with the given credentials (updated if they changed) and the annotators; all in the workspace."""
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal, async_engine
    from argilla_server.enums import UserRole
    from argilla_server.models import User, Workspace, WorkspaceUser

    made = []
    async with AsyncSessionLocal() as db:
        workspace = await Workspace.get_by(db, name=args.workspace)
        if workspace is None:
            workspace = await Workspace.create(db, name=args.workspace)
        holder = await User.get_by(db, api_key=args.api_key)
        if holder is not None and holder.username != args.username:
            raise SystemExit(f"api key already belongs to user {holder.username!r}: pass another --api-key")
        wanted = [(args.username, UserRole.owner, args.api_key)] + [(n, UserRole.annotator, None) for n in args.annotators]
        for username, role, api_key in wanted:
            user = await accounts.get_user_by_username(db, username)
            if user is None:
                user = await User.create(
                    db,
                    first_name=username,
                    username=username,
                    role=role,
                    password_hash=accounts.hash_password(args.password),
                    **({"api_key": api_key} if api_key else {}),
                )
            elif role == UserRole.owner:
                changes = {}
                if user.api_key != api_key:
                    changes["api_key"] = api_key
                if not accounts.verify_password(args.password, user.password_hash):
                    changes["password_hash"] = accounts.hash_password(args.password)
                if user.role != UserRole.owner:
                    changes["role"] = UserRole.owner
                if changes:
                    await user.update(db, **changes)
            if await WorkspaceUser.get_by(db, workspace_id=workspace.id, user_id=user.id) is None:
                await WorkspaceUser.create(db, workspace_id=workspace.id, user_id=user.id)
            made.append((user.username, str(user.role), user.api_key))
    await async_engine.dispose()  # pooled connections must not outlive this event loop
    return made


async def rebuild_index() -> int:
    from argilla_server.cli.search_engine.reindex import Reindexer
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.search_engine import get_search_engine

    count = 0
    async with AsyncSessionLocal() as db:
        async for engine in get_search_engine():
            async for dataset in Reindexer.reindex_datasets(db, engine):
                async for records in Reindexer.reindex_dataset_records(db, engine, dataset):
                    count += len(records)
    return count


class JobWorker:
    """rq's SimpleWorker on a thread: jobs must run in this process, where the search index lives."""

    def __init__(self):
        from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
        from rq import SimpleWorker
        from rq.timeouts import TimerDeathPenalty

        class ThreadWorker(SimpleWorker):
            death_penalty_class = TimerDeathPenalty  # SIGALRM works on the main thread only

            def _install_signal_handlers(self):
                pass  # the launcher owns SIGTERM/SIGINT

            def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
                # rq waits for a job without ever looking at _stop_requested; wait in 1 s slices instead.
                while not self._stop_requested:
                    result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time=1)
                    if result is not None:
                        return result
                return None  # makes work() return

        self.worker = ThreadWorker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION)
        self.thread = threading.Thread(target=self._run, name="rq-worker", daemon=True)

    def _run(self):
        while not self.worker._stop_requested:
            try:
                self.worker.work(logging_level="WARNING")
            except Exception:  # a lost Redis connection must not end background jobs for good
                LOG.exception("rq worker crashed; restarting in 1 s")
                time.sleep(1)

    def start(self):
        self.thread.start()

    def stop(self, timeout: float = 10):
        self.worker._stop_requested = True
        self.thread.join(timeout)


def wait_healthy(url: str, api_key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{url}/api/v1/me", headers={"X-Argilla-Api-Key": api_key})
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become healthy in {timeout:.0f} s")
        time.sleep(0.1)


def shown(value: str, variable: str) -> str:
    """A secret as it may be printed: the built-in defaults are public, one set in the environment is not."""
    return f"${variable}" if os.environ.get(variable) == value else value


async def serve(args, url: str, users: list) -> None:
    import uvicorn
    from argilla_server._app import app

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield  # uvicorn would re-raise the signal after shutdown, before Redis is stopped

    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, workers=1))

    signalled = []

    def request_stop():
        signalled.append(True)
        server.force_exit = server.should_exit  # a second signal skips the graceful wait
        server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)

    count = await rebuild_index()
    LOG.info("search index rebuilt from the database: %d records", count)

    async def announce():
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.05)
        if server.should_exit:
            return
        await asyncio.to_thread(wait_healthy, url, args.api_key)
        for username, role, api_key in users:
            print(f"ARGILLA_USER username={username} role={role} api_key={shown(api_key, 'ARGILLA_API_KEY')}", flush=True)
        password, api_key = shown(args.password, "ARGILLA_PASSWORD"), shown(args.api_key, "ARGILLA_API_KEY")
        print(f"ARGILLA_READY url={url} username={args.username} password={password} api_key={api_key}", flush=True)
        LOG.warning("Argilla is up at %s: sign in as %s / %s (Ctrl-C stops it)", url, args.username, password)

    announcer = asyncio.create_task(announce())
    await server.serve()
    announcer.cancel()
    if not server.started and not signalled:  # a Ctrl-C during start-up is a clean stop, not a failure
        raise RuntimeError(f"uvicorn could not start on {args.host}:{args.port}")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.port == 0:
        args.port = free_port(args.host)
    else:  # fail now rather than after the 10 s start-up
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((args.host, args.port))
            except OSError as err:
                sys.exit(f"cannot listen on {args.host}:{args.port}: {err.strerror} (another Argilla running?)")
    url = f"http://{args.host}:{args.port}"

    # Until the event loop takes over the signals, SystemExit unwinds through the finally below.
    def early_exit(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, early_exit)
    signal.signal(signal.SIGINT, early_exit)

    redis_child = worker = None
    try:
        if args.redis_url:
            redis_url = args.redis_url
        elif shutil.which("redis-server"):
            redis_child = RedisChild(data_dir)
            redis_child.wait_ready()
            redis_url = redis_child.url
        else:
            LOG.warning("redis-server not found: using fakeredis inside this process")
            redis_url = use_fakeredis()
        configure_environment(args, data_dir, redis_url)

        sys.path.insert(0, str(HERE))
        import search_engine  # noqa: F401  registers the "inmemory" engine

        migrate()
        users = asyncio.run(ensure_users(args))
        worker = JobWorker()
        worker.start()
        asyncio.run(serve(args, url, users))
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up even if signalled again
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if worker is not None:
            worker.stop()
        if redis_child is not None:
            redis_child.stop()
        shutil.rmtree(data_dir / "tmp", ignore_errors=True)
        LOG.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
