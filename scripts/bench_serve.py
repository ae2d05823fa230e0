"""A bounded local load test of `synthloop serve`: latency and throughput on 127.0.0.1, and a model swap under load.

    nice -n 10 .venv/bin/python scripts/bench_serve.py        # writes benchmarks/serve.json and serve.md
    .venv/bin/python scripts/bench_serve.py --quick           # tfidf-lr and hybrid-lr, no swap, about 3 minutes:
                                                              # benchmarks/serve-quick.json and serve-quick.md

For each model (a project trained on 300 labeled SMS from examples/sms_spam), a real server process
(`python -m synthloop serve --no-access-log`, one BLAS thread; --access-log keeps the default log on) and a
keep-alive HTTP/1.1 client on a raw socket (see Client):
- single: one text per request, one client, requests back to back: p50/p99 latency, requests/s;
- batched: 64 texts per request, one client: p50/p99 latency per request, texts/s;
- concurrent: one text per request, 4 clients at once: requests/s;
- swap (hybrid-lr, the default model, and tfidf-lr unless --swap-models): 2 clients send single requests while `synthloop train` makes a new
  version in the project, until the server serves it, plus 2 s: failed requests, p50/p99 in that window.
Every phase runs --reps times (at least 3); the tables give the min and the median over them. CPU seconds are
the server's (psutil) and the client's (time.process_time) per phase; the load average is read before and after.
Latency is client-side, end to end (HTTP, JSON, prediction), so it includes the client's own Python.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sms_spam"
TARGET_P50_MS = 5.0
BATCH = 64


def percentile_ms(seconds: list[float], q: float) -> float:
    return 1000 * float(np.percentile(seconds, q))


class Server:
    def __init__(self, project: Path, log: Path, access_log: bool = False):
        self.log_path = log
        self._log = open(log, "w")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.pop("SYNTHLOOP_SERVE_TOKEN", None)
        self.process = subprocess.Popen([sys.executable, "-m", "synthloop", "serve", "--port", "0", "--project", str(project),
                                         "--poll", "0.5", "--access-log" if access_log else "--no-access-log"],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while not (found := re.search(r" at http://127\.0\.0\.1:(\d+)", log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        self.port = int(found.group(1))
        self.ps = psutil.Process(self.process.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self._log.close()


class Client:
    """One keep-alive connection on a raw socket; post() returns (status, parsed body).

    Not http.client: its request building and header parsing cost the client about 0.6 ms of CPU per request
    (measured), on the same 2 cores as the server, and that time is inside every measured latency. This client
    sends prepared bytes and reads the reply by its Content-Length (uvicorn always sends one for these replies)."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def post(self, body: dict) -> tuple[int, dict]:
        data = json.dumps(body).encode()
        self.sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:"))
        while len(self.buffer) < length:
            self._read()
        reply, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, json.loads(reply)

    def _read(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def served_version(port: int) -> int:
    # A fresh connection each time: one left idle while a model trains is closed by the server's keep-alive timeout.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())["model_version"]
    finally:
        conn.close()


def timed_requests(port: int, bodies: list[dict]) -> list[float]:
    client = Client(port)
    times = []
    try:
        for body in bodies:
            start = time.perf_counter()
            status, _ = client.post(body)
            times.append(time.perf_counter() - start)
            if status != 200:
                raise RuntimeError(f"request failed with {status}")
    finally:
        client.close()
    return times


def phase(server: Server, run) -> dict:
    print(f"  {run.__name__ if hasattr(run, '__name__') else 'phase'}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]
    cpu0, client0, wall0 = server.cpu(), time.process_time(), time.perf_counter()
    result = run()
    wall = time.perf_counter() - wall0
    return {**result, "wall_s": wall, "server_cpu_s": server.cpu() - cpu0, "client_cpu_s": time.process_time() - client0,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def single(port: int, texts: list[str], n: int) -> dict:
    times = timed_requests(port, [{"text": texts[i % len(texts)]} for i in range(n)])
    return {"requests": n, "p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99),
            "requests_per_s": n / sum(times)}


def batched(port: int, texts: list[str], n: int) -> dict:
    bodies = [{"texts": [texts[(i * BATCH + j) % len(texts)] for j in range(BATCH)]} for i in range(n)]
    times = timed_requests(port, bodies)
    return {"requests": n, "texts_per_request": BATCH, "p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99),
            "texts_per_s": n * BATCH / sum(times)}


def concurrent(port: int, texts: list[str], n: int, clients: int = 4) -> dict:
    results: list[list[float]] = [[] for _ in range(clients)]

    def work(k):
        results[k] = timed_requests(port, [{"text": texts[(k * n + i) % len(texts)]} for i in range(n)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    times = [t for r in results for t in r]
    return {"clients": clients, "requests": len(times), "p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99),
            "requests_per_s": len(times) / wall}


def swap(server: Server, project: Path, texts: list[str], clients: int = 2) -> dict:
    """Clients keep sending while another process trains a new version; ends 2 s after the server serves it."""
    before = served_version(server.port)
    stop = threading.Event()
    times, failed, versions = [], [], []
    lock = threading.Lock()

    def work(k):
        client, i = Client(server.port), 0
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status, body = client.post({"text": texts[(k * 7919 + i) % len(texts)]})
                ok = status == 200 and "label" in body
            except (OSError, ValueError, StopIteration) as e:
                ok, body = False, {"error": repr(e)}
                client.close()
                client = Client(server.port)
            with lock:
                (times if ok else failed).append(time.perf_counter() - start if ok else body)
                if ok:
                    versions.append(body["model_version"])
            i += 1
        client.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    train_start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-m", "synthloop", "train", "--project", str(project)], check=True, env=env,
                   capture_output=True)
    trained = time.perf_counter()
    while served_version(server.port) == before:
        time.sleep(0.05)
    swapped = time.perf_counter()
    time.sleep(2.0)  # requests right after the swap, on the new model
    stop.set()
    for t in threads:
        t.join()
    return {"clients": clients, "requests": len(times) + len(failed), "failed": len(failed), "failures": failed[:5],
            "versions": sorted(set(versions)), "from_version": before, "train_s": trained - train_start,
            "seconds_to_swap_after_train": swapped - trained,
            "p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99)}


def make_project(root: Path, model: str):
    from synthloop import Project

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    pd.read_csv(EXAMPLE / "pool.csv").head(300).to_csv(data / "pool.csv", index=False)
    proj = Project.init(root / model, EXAMPLE / "task.toml", model={"name": model})
    proj.import_file(data / "pool.csv", label_col="label")
    proj.import_file(EXAMPLE / "test.csv", label_col="label", split="test")
    proj.train()
    return proj


def summarize(reps: list[dict], keys: tuple[str, ...]) -> dict:
    return {k: {"min": min(r[k] for r in reps), "median": statistics.median(r[k] for r in reps)} for k in keys}


def bench_model(model: str, work: Path, args) -> dict:
    from synthloop.report.impact import counterfactual

    proj = make_project(work, model)
    gpt4o = counterfactual(proj.store, proj.config, None, 0.0)
    proj.close()
    texts = pd.read_csv(EXAMPLE / "test.csv").text.tolist()
    server = Server(work / model, work / f"{model}.log", access_log=args.access_log)
    try:
        timed_requests(server.port, [{"text": t} for t in texts[:50]])  # warm: imports, caches, first connections
        out = {"model": model, "gpt4o": {"seconds_per_request": gpt4o["assumed_seconds_per_request"],
                                          "usd_per_request": gpt4o["usd_per_request"]}}
        out["single"] = [phase(server, lambda: single(server.port, texts, args.single)) for _ in range(args.reps)]
        out["batched"] = [phase(server, lambda: batched(server.port, texts, args.batches)) for _ in range(args.reps)]
        out["concurrent"] = [phase(server, lambda: concurrent(server.port, texts, args.single // 4)) for _ in range(args.reps)]
        if model in args.swap_models:
            out["swap"] = [phase(server, lambda: swap(server, work / model, texts)) for _ in range(args.reps)]
    finally:
        server.stop()
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Serving the compact model (`synthloop serve`)", "",
        f"Generated by `scripts/bench_serve.py{' --quick' if result.get('quick') else ''}` on {m['cpus']} CPUs "
        f"({m['machine']}), Python {m['python']}, at nice {m.get('nice', 0)}, "
        f"load average per phase (in `{result.get('name', 'serve')}.json`) {m['load_min']:.1f} to {m['load_max']:.1f}. "
        f"Each model trained on 300 labeled SMS; a real `synthloop serve` process on 127.0.0.1, access log "
        f"{'on' if result.get('access_log', True) else 'off (`--no-access-log`)'}; client: one keep-alive HTTP/1.1 "
        f"connection on a raw socket, in another process. Latency is end to end at the client. "
        f"{result['reps']} repetitions per phase of {result.get('single', 400)} single and {result.get('batches', 20)} "
        f"batched requests: min / median over them.", "",
        "| model | single p50 ms | single p99 ms | single req/s | batch of 64 p50 ms | batch p99 ms | texts/s batched | "
        "4 clients req/s | server CPU s per 1k single | GPT-4o s per request (assumed) | speed-up vs GPT-4o (p50) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["models"]:
        s, b, c = r["summary"]["single"], r["summary"]["batched"], r["summary"]["concurrent"]
        cpu_per_1k = statistics.median(p["server_cpu_s"] / p["requests"] * 1000 for p in r["single"])
        g = r["gpt4o"]["seconds_per_request"]
        lines.append(f"| {r['model']} | {s['p50_ms']['min']:.2f} / {s['p50_ms']['median']:.2f} | {s['p99_ms']['min']:.2f} / "
                     f"{s['p99_ms']['median']:.2f} | {s['requests_per_s']['median']:,.0f} | {b['p50_ms']['min']:.1f} / "
                     f"{b['p50_ms']['median']:.1f} | {b['p99_ms']['median']:.1f} | {b['texts_per_s']['median']:,.0f} | "
                     f"{c['requests_per_s']['median']:,.0f} | {cpu_per_1k:.2f} | {g} | "
                     f"{1000 * g / s['p50_ms']['median']:,.0f}× |")
    lines += ["", "GPT-4o per request: the report's figure (`synthloop.report.impact.GPT4O_SECONDS_PER_REQUEST`), an assumed "
              "typical latency, not measured here; "
              f"${result['models'][0]['gpt4o']['usd_per_request']:.6f} per request for this task's prompt (same module).", ""]
    swaps = [(r["model"], p) for r in result["models"] for p in r.get("swap", [])]
    if swaps:
        lines += ["## A new model version swapped in under load", "",
                  "2 clients send single requests while `synthloop train` (another process) makes a new version; the "
                  "server polls every 0.5 s, loads the new version in full, then swaps one reference. Window: from the "
                  "start of training to 2 s after the server serves the new version.", "",
                  "| model | versions | requests | failed | p50 ms | p99 ms | train s | swap s after train | load |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for model, p in swaps:
            lines.append(f"| {model} | {' → '.join(map(str, p['versions']))} | {p['requests']} | {p['failed']} | "
                         f"{p['p50_ms']:.2f} | {p['p99_ms']:.1f} | {p['train_s']:.1f} | {p['seconds_to_swap_after_train']:.1f} | "
                         f"{p['load_before']:.1f} |")
        lines.append("")
    lines += ["## Reading these figures", "",
              f"- The server and the client share {m['cpus']} cores with whatever else runs (load average "
              f"{m['load_min']:.1f}-{m['load_max']:.1f}): above a load of about {m['cpus']}, most of the wall latency is "
              "waiting for a CPU. The server's CPU time per request (column above, HTTP and JSON included) is what a "
              "request costs."]
    for r in result["models"]:
        cpu = statistics.median(p["server_cpu_s"] / p["requests"] * 1000 for p in r["single"])
        client = statistics.median(p["client_cpu_s"] / p["requests"] * 1000 for p in r["single"])
        wall = r["summary"]["single"]["p50_ms"]["median"]
        lines.append(f"- {r['model']}: {cpu:.2f} ms of server CPU and {client:.2f} ms of client CPU per single request "
                     f"against a p50 of {wall:.2f} ms wall.")
    embed = next((r for r in result["models"] if r["model"] == "embed-lr"), None)
    if embed:
        per_single = statistics.median(p["server_cpu_s"] / p["requests"] for p in embed["single"])
        per_batched = statistics.median(p["server_cpu_s"] / (p["requests"] * BATCH) for p in embed["batched"])
        lines.append(f"- embed-lr: {1000 * per_batched:.0f} ms of server CPU per text in batches of {BATCH} against "
                     f"{1000 * per_single:.0f} ms one by one. Likely padding (SentenceEmbedder pads each batch of up to 64 "
                     "to its longest text), not measured apart.")
    lines += ["", "## Against the targets", ""]
    for r in result["models"]:
        p50 = r["summary"]["single"]["p50_ms"]
        met = "**met**" if p50["median"] < TARGET_P50_MS else "**not met**"
        lines.append(f"- {r['model']}: p50 of a single prediction < {TARGET_P50_MS:.0f} ms in a warm server: {met} "
                     f"(median {p50['median']:.2f} ms, min {p50['min']:.2f} ms over {result['reps']} runs).")
    if swaps:
        failed = sum(p["failed"] for _, p in swaps)
        total = sum(p["requests"] for _, p in swaps)
        lines.append(f"- 0 failed requests while a new version is swapped in under load: {'**met**' if failed == 0 else '**not met**'} "
                     f"({failed} of {total} requests failed over {len(swaps)} swaps).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="hybrid-lr,tfidf-lr,hashing-lr,embed-lr")
    parser.add_argument("--swap-models", default="hybrid-lr,tfidf-lr")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--single", type=int, default=400, help="single requests per repetition")
    parser.add_argument("--batches", type=int, default=20, help="batched requests per repetition")
    parser.add_argument("--quick", action="store_true", help="the short run: --models tfidf-lr,hybrid-lr --single 200 "
                        "--batches 5, no swap phase")
    parser.add_argument("--access-log", action="store_true", help="serve with the access log on (its default)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json; measure nothing")
    args = parser.parse_args()
    if args.markdown_only:
        name = "serve-quick" if args.quick else "serve"
        (args.out / f"{name}.md").write_text(markdown(json.loads((args.out / f"{name}.json").read_text())))
        return
    if args.reps < 3:
        parser.error("--reps must be at least 3 (min and median over repetitions)")
    if args.quick:
        args.models, args.single, args.batches, args.swap_models = "tfidf-lr,hybrid-lr", 200, 5, ""
    args.swap_models = set(args.swap_models.split(",")) - {""}
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT / "src"))
    models = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for model in args.models.split(","):
            if model in ("embed-lr", "hybrid-lr"):
                from synthloop.learn.embed import EmbeddingBackendError, packaged_files, use_file

                try:
                    (packaged_files if model == "embed-lr" else use_file)()
                except EmbeddingBackendError as e:
                    print(f"skipping {model}: {e}", file=sys.stderr)
                    continue
            print(f"benchmarking {model}", file=sys.stderr, flush=True)
            r = bench_model(model, Path(tmp), args)
            r["summary"] = {name: summarize(r[name], keys) for name, keys in (
                ("single", ("p50_ms", "p99_ms", "requests_per_s")), ("batched", ("p50_ms", "p99_ms", "texts_per_s")),
                ("concurrent", ("p50_ms", "p99_ms", "requests_per_s")))}
            models.append(r)
            write(args.out, models, args)
    write(args.out, models, args)
    print((args.out / f"{'serve-quick' if args.quick else 'serve'}.md").read_text())


def write(out: Path, models: list[dict], args) -> None:
    """After each model, so a run cut short still leaves what it measured."""
    loads = [p[k] for r in models for name in ("single", "batched", "concurrent", "swap") for p in r.get(name, [])
             for k in ("load_before", "load_after")]
    result = {"machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                          "load_min": min(loads), "load_max": max(loads), "nice": os.nice(0)},
              "reps": args.reps, "quick": args.quick, "access_log": args.access_log, "single": args.single,
              "batches": args.batches, "target_p50_ms": TARGET_P50_MS, "generated_at": time.time(), "models": models}
    out.mkdir(exist_ok=True)
    name = result["name"] = "serve-quick" if args.quick else "serve"  # a short run leaves the full run's files alone
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
