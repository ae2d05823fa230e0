"""`synthloop serve` and `export-model`: real server processes (`python -m synthloop serve`) and a real HTTP client."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from forkserver import run_synthloop
from helpers import EXAMPLE, skip_or_fail, wait_for

for _module in ("starlette", "uvicorn", "skops"):
    try:
        __import__(_module)
    except ImportError:
        skip_or_fail(f"{_module} is not installed: pip install 'synthloop[serve]' to run the serve tests")

from synthloop import Project  # noqa: E402
from synthloop.serve.deploy import ModelFileError, export_model, load_export  # noqa: E402

TOKEN = "s3cret-token-for-tests"
TEXTS = ["WINNER! Claim your free prize now, call 0800 123 456", "are we still on for lunch tomorrow?",
         "URGENT: your account needs verification, reply with your PIN", "ok see you at 7"]



def cli(*args, cwd=None, env=None, check=True) -> subprocess.CompletedProcess:
    proc = run_synthloop(*args, cwd=cwd, env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


class Server:
    """`synthloop serve --port 0 ...` in its own process; the URL comes from the line it prints."""

    def __init__(self, log: Path, *args, token: str | None = None):
        env = {k: v for k, v in os.environ.items() if k != "SYNTHLOOP_SERVE_TOKEN"}
        if token:
            env["SYNTHLOOP_SERVE_TOKEN"] = token
        self.log_path = log
        self._log = open(log, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "synthloop", "serve", "--port", "0", *map(str, args)],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=env)
        match = wait_for(lambda: self._url() or self._exited(), what=f"the server's URL in {log}")
        assert isinstance(match, str), f"the server exited: {self.log()}"
        self.url = match
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=60)
        wait_for(lambda: self._healthy(), what="/healthz")

    def log(self) -> str:
        return self.log_path.read_text()

    def _url(self):
        found = re.search(r" at (http://[0-9.]+:\d+)", self.log())
        return found and found.group(1)

    def _exited(self):
        return self.process.poll() is not None and "exited"

    def _healthy(self):
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def version(self) -> int:
        return httpx.get(self.url + "/healthz", timeout=30).json()["model_version"]

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A project with two model versions (tfidf-lr) trained on 300 labeled SMS, scored on 200."""
    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    data.mkdir()
    pd.read_csv(EXAMPLE / "pool.csv").head(300).to_csv(data / "pool.csv", index=False)
    pd.read_csv(EXAMPLE / "test.csv").head(200).to_csv(data / "test.csv", index=False)
    proj = Project.init(root / "proj", EXAMPLE / "task.toml", model={"name": "tfidf-lr"})
    proj.import_file(data / "pool.csv", label_col="label")
    proj.import_file(data / "test.csv", label_col="label", split="test")
    proj.train()
    proj.train()
    proj.close()
    return root / "proj"


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("log") / "serve.log", "--project", trained, "--max-texts", 4,
                 "--max-chars", 200, "--max-body-bytes", 4000, token=TOKEN)
    yield srv
    srv.stop()


def project_proba(root: Path, version: int, texts: list[str]) -> np.ndarray:
    proj = Project(root)
    try:
        return proj.load_model(version)[1].predict_proba(texts)
    finally:
        proj.close()


def test_predict_single_and_batch_give_the_models_probabilities(server, trained):
    expected = project_proba(trained, 2, TEXTS)
    one = server.client.post("/v1/predict", json={"text": TEXTS[0]})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model_version"] == 2 and body["label"] == "spam"
    assert body["probabilities"]["spam"] == pytest.approx(expected[0][1], abs=1e-9)
    batch = server.client.post("/v1/predict", json={"texts": TEXTS}).json()
    assert batch["model_version"] == 2
    got = np.array([[p["probabilities"]["ham"], p["probabilities"]["spam"]] for p in batch["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert [p["label"] for p in batch["predictions"]] == ["ham" if p[0] > p[1] else "spam" for p in expected]


def test_healthz_and_model_info(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok", "model_version": 2}
    info = server.client.get("/v1/model").json()
    assert info["task"] == "sms-spam" and info["labels"] == ["ham", "spam"] and info["version"] == 2
    assert info["model"] == "tfidf-lr" and info["n_train"] >= 300
    assert info["limits"] == {"max_texts": 4, "max_chars": 200, "max_body_bytes": 4000}


@pytest.mark.parametrize("content, status, words", [
    (json.dumps({"texts": ["a"] * 5}), 413, "at most 4"),
    (json.dumps({"text": "x" * 201}), 413, "201 characters; at most 200"),
    (json.dumps({"texts": ["x" * 150] * 4, "pad": "y" * 4000}), 413, "at most 4000"),
    ("not json", 400, "not JSON"),
    (json.dumps({"texts": "one string"}), 422, "list of strings"),
    (json.dumps({"texts": []}), 422, "empty"),
    (json.dumps({"texts": ["ok", 3]}), 422, "texts[1] is int"),
    (json.dumps({"text": "a", "texts": ["b"]}), 422, "exactly one of text or texts"),
    (json.dumps({"txt": "a"}), 422, "exactly one of text or texts"),
])
def test_bad_requests_get_clear_4xx_json(server, content, status, words):
    reply = server.client.post("/v1/predict", content=content, headers={"Content-Type": "application/json"})
    assert reply.status_code == status and words in reply.json()["error"], reply.text


def test_a_chunked_body_over_the_limit_is_cut_off(server):
    def chunks():  # no Content-Length: the server counts bytes as they arrive
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"x" * 500
        yield b'"]}'

    reply = server.client.post("/v1/predict", content=chunks())
    assert reply.status_code == 413 and "over 4000 bytes" in reply.json()["error"]
    assert server.client.get("/nope").status_code == 404 and "no such endpoint" in server.client.get("/nope").json()["error"]


def test_token_is_required_compared_and_never_logged(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in (("POST", "/v1/predict"), ("GET", "/v1/model")):
            reply = httpx.request(method, server.url + path, json={"text": "hi"}, headers=headers)
            assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
            assert "bearer token" in reply.json()["error"] and TOKEN not in reply.text
    assert server.client.post("/v1/predict", json={"text": "hi"}).status_code == 200
    assert httpx.get(server.url + "/healthz").status_code == 200  # process managers poll it without the token
    log = server.log()
    assert "POST /v1/predict" in log and "401" in log  # the access log is on, and holds no token
    assert TOKEN not in log


def test_a_new_version_is_swapped_in_under_load_with_no_failed_request(trained, tmp_path):
    root = tmp_path / "proj"
    shutil.copytree(trained, root)
    srv = Server(tmp_path / "serve.log", "--project", root, "--poll", "0.5")
    seen, failures, stop = [], [], threading.Event()

    def client():
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            while not stop.is_set():
                try:
                    reply = c.post("/v1/predict", json={"texts": TEXTS[:2]})
                    if reply.status_code != 200 or len(reply.json()["predictions"]) != 2:
                        failures.append(reply.text)
                    else:
                        seen.append(reply.json()["model_version"])
                except httpx.HTTPError as e:
                    failures.append(repr(e))

    thread = threading.Thread(target=client)
    try:
        thread.start()
        wait_for(lambda: len(seen) >= 5, what="requests before the swap")
        cli("train", "--project", root)  # a real new version, written by another process
        wait_for(lambda: srv.version() == 3, what="the server to serve v3")
        after = len(seen)
        wait_for(lambda: len(seen) >= after + 5, what="requests after the swap")
    finally:
        stop.set()
        thread.join(timeout=60)
        srv.stop()
    assert failures == []
    assert seen[0] == 2 and seen[-1] == 3 and seen == sorted(seen)  # old, then new, never back
    assert "now serving model v3 (was v2)" in srv.log()


def test_export_round_trip_predict_and_serve_a_watched_folder(trained, tmp_path):
    out = tmp_path / "export"
    manifest = json.loads(cli("export-model", out, "--version", 1, "--project", trained, "--json").stdout)
    assert manifest["version"] == 1 and manifest["task"] == "sms-spam" and manifest["labels"] == ["ham", "spam"]
    assert manifest["model"] == "tfidf-lr" and manifest["metrics"]["accuracy"] > 0.8
    assert manifest["synthloop_version"] and manifest["file"] == "model-v0001.skops"
    import hashlib

    assert hashlib.sha256((out / manifest["file"]).read_bytes()).hexdigest() == manifest["sha256"]
    expected = project_proba(trained, 1, TEXTS)
    np.testing.assert_allclose(load_export(out).model.predict_proba(TEXTS), expected, rtol=0, atol=1e-12)
    rows = json.loads(cli("predict", "--model-dir", out, TEXTS[0], "--json").stdout)
    assert rows[0]["model_version"] == 1 and rows[0]["probabilities"]["spam"] == pytest.approx(expected[0][1], abs=1e-9)

    srv = Server(tmp_path / "serve.log", "--model-dir", out, "--poll", "0.5")
    try:
        got = srv.client.post("/v1/predict", json={"texts": TEXTS}).json()
        np.testing.assert_allclose([p["probabilities"]["spam"] for p in got["predictions"]], expected[:, 1], atol=1e-9)
        assert got["model_version"] == 1 and srv.client.get("/v1/model").json()["source"] == "export"
        proj = Project(trained)
        try:
            export_model(proj, out)  # the latest (v2) into the watched folder: the server follows it
        finally:
            proj.close()
        wait_for(lambda: srv.version() == 2, what="the server to follow the re-export")
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model-v0002.skops"]
    finally:
        srv.stop()


def test_a_tampered_export_is_refused(trained, tmp_path):
    import hashlib

    import skops.io as sio

    out = tmp_path / "export"
    proj = Project(trained)
    try:
        export_model(proj, out)
    finally:
        proj.close()
    model = load_export(out).model
    manifest = json.loads((out / "manifest.json").read_text())
    path = out / manifest["file"]
    good = path.read_bytes()

    path.write_bytes(good[:-10] + b"0123456789")  # damaged in transit
    with pytest.raises(ModelFileError, match="does not match the sha256"):
        load_export(out)

    # An attacker who rewrites both the file and its manifest: the file asks skops for os.system.
    model.on_load = os.system
    evil = sio.dumps(model)
    path.write_bytes(evil)
    (out / "manifest.json").write_text(json.dumps({**manifest, "sha256": hashlib.sha256(evil).hexdigest(),
                                                   "trusted_types": sio.get_untrusted_types(data=evil)}))
    with pytest.raises(ModelFileError, match=r"does not trust: .*system.*refusing to load it"):
        load_export(out)
    for args in (("predict", "--model-dir", out, "hello"), ("serve", "--port", "0", "--model-dir", out)):
        proc = cli(*args, check=False)
        assert proc.returncode == 2 and "does not trust" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["hashing-lr", "embed-lr", "hybrid-lr"])
def test_export_round_trip_of_the_other_models(name, tmp_path):
    if name == "embed-lr":
        from synthloop.learn.embed import EmbeddingBackendError, packaged_files

        try:
            packaged_files()
        except EmbeddingBackendError as e:
            skip_or_fail(f"packaged all-MiniLM-L6-v2 not installed (make install adds it): {e}")
    proj = Project.init(tmp_path / "proj", EXAMPLE / "task.toml", model={"name": name})
    try:
        pd.read_csv(EXAMPLE / "pool.csv").head(300).to_csv(tmp_path / "pool.csv", index=False)
        proj.import_file(tmp_path / "pool.csv", label_col="label")
        proj.train()
        _, model = proj.load_model()
        manifest = export_model(proj, tmp_path / "export")
    finally:
        proj.close()
    loaded = load_export(tmp_path / "export")
    assert manifest["model"] == name and (manifest["embedding"] is not None) == (name in ("embed-lr", "hybrid-lr"))
    np.testing.assert_allclose(loaded.model.predict_proba(TEXTS), model.predict_proba(TEXTS), rtol=0, atol=1e-6)
    if name == "hybrid-lr":  # the project's embedding store stays behind: the export embeds afresh
        assert loaded.model.featurizer_.store is None
    assert loaded.fast is not None  # the server's direct route gives the same numbers for this model
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), model.predict_proba(TEXTS), rtol=0, atol=1e-9)


def test_bad_command_lines_are_one_line_errors(trained, tmp_path):
    empty = tmp_path / "empty"
    cli("init", empty, "--task", EXAMPLE / "task.toml")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    for args, words in [(("serve", "--project", empty), "no model yet"),
                        (("serve", "--project", trained, "--version", 9), "no model version 9"),
                        (("serve", "--model-dir", tmp_path / "none"), "manifest.json is missing"),
                        (("serve", "--project", trained, "--port", busy.getsockname()[1]), "choose another --port"),
                        (("serve", "--model-dir", tmp_path / "none", "--project", trained), "not both"),
                        (("export-model", tmp_path / "taken", "--project", trained), "holds other files"),
                        (("export-model", tmp_path / "x", "--project", trained, "--version", 9), "no model")]:
        proc = cli(*args, check=False)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    busy.close()
    assert not (tmp_path / "x").exists() and (tmp_path / "taken" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", ["tfidf-lr", "hashing-lr"])
@pytest.mark.parametrize("calibrate", [True, False])
def test_the_servers_direct_route_gives_the_models_probabilities(name, calibrate):
    """Three classes seen and a fourth task label never seen (an all-zero column), calibrated or not."""
    from synthloop.learn.models import TextClassifier
    from synthloop.serve.fastpath import fast_predict_proba

    rng = np.random.default_rng(0)
    words = {"fruit": "apple banana juice pear", "sport": "goal match team score", "vote": "party election law poll"}
    y = [k for k in words for _ in range(30)]
    texts = [" ".join(rng.choice(words[k].split(), 5)) + " " + rng.choice(["x", "y", "z"]) for k in y]
    model = TextClassifier(labels=[*words, "other"], name=name, calibrate=calibrate).fit(texts, y)
    fast = fast_predict_proba(model)
    assert fast is not None
    probe = ["apple goal", "law and order", "", *texts[:5]]
    np.testing.assert_allclose(fast(probe), model.predict_proba(probe), rtol=0, atol=1e-12)
    assert (fast(probe)[:, 3] == 0).all()


def test_the_direct_route_of_hybrid_lr_blends_the_zero_shot_prior_and_leaves_the_store_alone(tmp_path):
    """hybrid-lr: TF-IDF blocks, the sentence embedding computed per request, and the zero-shot prior's blend."""
    from synthloop.learn.embed import EmbeddingBackendError, use_file
    from synthloop.learn.models import TextClassifier, model_options
    from synthloop.serve.fastpath import fast_predict_proba
    from synthloop.task import load_task

    try:
        use_file()
    except EmbeddingBackendError as e:
        skip_or_fail(f"the Universal Sentence Encoder is not installed (make install adds it): {e}")
    pool = pd.read_csv(EXAMPLE / "pool.csv").head(120)
    (tmp_path / "state").mkdir()  # the store is used where its folder's parent exists, as in a project
    options = model_options(load_task(EXAMPLE / "task.toml"), tmp_path / "state")
    model = TextClassifier(labels=["ham", "spam"], name="hybrid-lr", **options).fit(pool.text.tolist(), pool.label.tolist())
    assert model.prior_weight() > 0  # the blend is on this route
    store = tmp_path / "state" / "features"
    assert any(p.is_file() for p in store.rglob("*"))  # training stored the pool's vectors
    fast = fast_predict_proba(model)
    assert fast is not None
    probe = ["a text this model never saw: brand new", *TEXTS]
    after = sorted((p.name, p.stat().st_size) for p in store.rglob("*") if p.is_file())
    got = fast(probe)
    assert sorted((p.name, p.stat().st_size) for p in store.rglob("*") if p.is_file()) == after  # nothing stored per request
    np.testing.assert_allclose(got, model.predict_proba(probe), rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast(probe[:1]), got[:1], rtol=0, atol=1e-9)  # one text alone: the same numbers
