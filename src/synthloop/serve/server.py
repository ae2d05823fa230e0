"""`synthloop serve`: the compact model over HTTP (Starlette + uvicorn).

POST /v1/predict  {"text": "..."} or {"texts": ["...", ...]} -> label, probability, probabilities, model_version
GET  /v1/model    task, labels, model, version, metrics
GET  /healthz     {"status": "ok", "model_version": N} (no token needed: process managers and load balancers poll it)

A thread polls the model source every few seconds; a newer version is loaded and warmed up in full before
one reference is swapped, so each request uses one whole model from start to end, never a half-loaded one.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from synthloop.errors import SynthloopError
from synthloop.serve.deploy import LoadedModel

TOKEN_ENV = "SYNTHLOOP_SERVE_TOKEN"
log = logging.getLogger("synthloop.serve")


@dataclass(frozen=True)
class Limits:
    max_texts: int = 256  # texts per request
    max_chars: int = 10_000  # characters per text
    max_body_bytes: int = 1_048_576  # request body


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class ModelHolder:
    """The model being served, and the thread that swaps in a newer one."""

    def __init__(self, source, poll_seconds: float = 2.0):
        self.source = source
        self.poll_seconds = poll_seconds
        self.current: LoadedModel = self._load(source.latest())
        self._failed_version = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self, version) -> LoadedModel:
        loaded = self.source.load(version)
        loaded.predict_proba(["warm up"])  # lazy parts (the embedder's ONNX session) before any request
        return loaded

    def poll_once(self) -> bool:
        """Swap in the source's version if it differs from the one served; True when it did."""
        version = None
        try:
            version = self.source.latest()
            if version is None or version == self.current.version or version == self._failed_version:
                return False
            loaded = self._load(version)
        except Exception as e:  # noqa: BLE001 - keep serving the old model; say why once per version
            if version != self._failed_version:
                log.warning("keeping model v%s: loading the new one failed: %s", self.current.version, e)
            self._failed_version = version
            return False
        previous, self.current = self.current, loaded  # one reference: requests see the old or the new model
        log.info("now serving model v%s (was v%s)", loaded.version, previous.version)
        return True

    def start(self) -> None:
        if self.poll_seconds > 0 and getattr(self.source, "pinned", None) is None:
            self._thread = threading.Thread(target=self._run, name="model-poller", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.source.close()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body has {int(declared)} bytes; at most {limit} (server option --max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: a chunked body has no Content-Length
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over {limit} bytes (server option --max-body-bytes); send fewer texts per request")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_texts(body: bytes, limits: Limits) -> tuple[list[str], bool]:
    """(texts, single): the texts of a predict request, checked against the limits."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(400, f"the body is not JSON ({e}); send {{\"texts\": [\"...\"]}} with Content-Type: application/json") from None
    shape = 'send {"text": "..."} or {"texts": ["...", ...]}'
    if not isinstance(data, dict) or len(data.keys() & {"text", "texts"}) != 1:
        raise RequestError(422, f"the body must be a JSON object with exactly one of text or texts; {shape}")
    unknown = sorted(data.keys() - {"text", "texts"})
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; {shape}")
    single = "text" in data
    texts = [data["text"]] if single else data["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, f"texts must be a list of strings; {shape}")
    if not texts:
        raise RequestError(422, "texts is empty; send at least one text")
    if len(texts) > limits.max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; at most {limits.max_texts} (server option --max-texts); "
                                "split the batch")
    for i, text in enumerate(texts):
        where = "text" if single else f"texts[{i}]"
        if not isinstance(text, str):
            raise RequestError(422, f"{where} is {type(text).__name__}, not a string")
        if len(text) > limits.max_chars:
            raise RequestError(413, f"{where} has {len(text)} characters; at most {limits.max_chars} (server option --max-chars)")
    return texts, single


def create_app(holder: ModelHolder, limits: Limits = Limits(), token: str | None = None) -> Starlette:
    expected = f"Bearer {token}".encode() if token else None

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, expected)  # constant time: no timing hints about the token

    def unauthorized() -> JSONResponse:
        return _error(401, f"missing or wrong bearer token; send Authorization: Bearer <the server's ${TOKEN_ENV}>",
                      headers={"WWW-Authenticate": "Bearer"})

    async def predict(request: Request) -> JSONResponse:
        if not authorized(request):
            return unauthorized()
        try:
            texts, single = parse_texts(await _read_body(request, limits.max_body_bytes), limits)
        except RequestError as e:
            return _error(e.status, str(e))
        loaded = holder.current  # this request uses this model throughout, even if a swap happens meanwhile
        # Small requests inline (a hop to the thread pool costs more than they take); big ones in a thread,
        # so /healthz keeps answering while they run.
        rows = loaded.predict(texts) if len(texts) <= 8 else await run_in_threadpool(loaded.predict, texts)
        for row in rows:
            del row["text"], row["model_version"]  # the client has its texts; one version for the whole reply
        if single:
            return JSONResponse({**rows[0], "model_version": loaded.version})
        return JSONResponse({"predictions": rows, "model_version": loaded.version})

    async def model_info(request: Request) -> JSONResponse:
        if not authorized(request):
            return unauthorized()
        loaded = holder.current
        return JSONResponse({**loaded.info, "version": loaded.version,
                             "limits": {"max_texts": limits.max_texts, "max_chars": limits.max_chars,
                                        "max_body_bytes": limits.max_body_bytes}})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model_version": holder.current.version})

    async def not_found(request: Request, exc) -> JSONResponse:
        status = getattr(exc, "status_code", 404)
        return _error(status, f"{request.method} {request.url.path}: {'no such endpoint' if status == 404 else 'method not allowed'}; "
                              "use POST /v1/predict, GET /v1/model or GET /healthz")

    async def server_error(request: Request, exc) -> JSONResponse:
        log.exception("predict failed")
        return _error(500, "the model failed on this request; the server log has the details")

    routes = [Route("/v1/predict", predict, methods=["POST"]), Route("/v1/model", model_info, methods=["GET"]),
              Route("/healthz", healthz, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, Exception: server_error})


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is a clear error and --port 0 can say which port it got."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise SynthloopError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(holder: ModelHolder, sock: socket.socket, limits: Limits, token: str | None, access_log: bool = True) -> None:
    """Run until SIGINT/SIGTERM (uvicorn finishes the requests in flight first)."""
    import uvicorn
    from threadpoolctl import threadpool_limits

    # One BLAS thread: a single prediction gains nothing from more, and spinning BLAS threads on a busy
    # machine make it many times slower (see synthloop.report.impact).
    threadpool_limits(limits=1, user_api="blas")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    config = uvicorn.Config(create_app(holder, limits, token), log_level="info", access_log=access_log,
                            lifespan="off", server_header=False)
    holder.start()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        holder.stop()


def token_from_env() -> str | None:
    return os.environ.get(TOKEN_ENV) or None
