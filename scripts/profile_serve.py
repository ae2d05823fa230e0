"""Where one warm hybrid-lr prediction's time goes, in-process (no HTTP), and the serving options measured side by side.

    .venv/bin/python scripts/profile_serve.py          # writes benchmarks/serve-profile.json and serve-profile.md

A project trained on 300 labeled SMS (as scripts/bench_serve.py trains it), then, one test text at a time:
- stages: thread CPU time of each step the server's direct route (synthloop.serve.fastpath) takes for a single
  request: parsing the body, the sentence encoder's onnxruntime run, the rest of the embedding (float32, l2 norm),
  the TF-IDF blocks, the logistic regression head and the zero-shot blend, the reply rows and their JSON;
- encoder: the Universal Sentence Encoder alone with 1 intra-op thread, 2 with spinning off, 2 with spinning on
  (its default), interleaved; and its CPU for texts of 0 to ~400 characters (what does not depend on the text);
- route: the whole direct route the server takes (the embedding in the calling thread after the TF-IDF). An
  overlapped route (the embedding in a worker thread while the caller computes the TF-IDF) was measured beside it
  at commit 521fff1, was no faster, and was removed.
Every comparison runs --reps times interleaved; min and median over the repetitions; the load average is read
before and after each. Wall time on a shared machine is mostly waiting for a core: read the CPU columns first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))
LENGTHS = {"empty": "", "one word": "hi",
           "90 chars": "Hey, are you coming to the party tonight? Let me know so I can save you a seat at the table.",
           "370 chars": "Hey, are you coming to the party tonight? Let me know so I can save you a seat at the table. " * 4}


def load_model(work: Path):
    from bench_serve import make_project

    from synthloop.serve.deploy import ProjectSource

    make_project(work, "hybrid-lr").close()
    source = ProjectSource(work / "hybrid-lr")
    return source, source.load(source.latest())


def stages(loaded, texts: list[str]) -> dict[str, list[float]]:
    """Thread CPU seconds per step, one list per step, one entry per text."""
    from starlette.responses import JSONResponse

    from synthloop.learn.models import prediction_rows
    from synthloop.serve import fastpath, server

    model = loaded.model
    featurizer = model.featurizer_
    embedder = featurizer._embedder()
    encode, _ = embedder._backend()
    vectorizers = fastpath._union(featurizer.tfidf_)
    head = fastpath._head(model.clf_)
    prior = model.prior_weight()
    clock = time.thread_time
    out: dict[str, list[float]] = {k: [] for k in ("parse", "encoder run", "embedding rest", "tf-idf", "head + prior",
                                                   "rows + json", "sum")}
    for text in texts:
        body = json.dumps({"text": text}).encode()
        t0 = clock()
        batch, _ = server.parse_texts(body, server.Limits())
        t1 = clock()
        raw = encode(batch)
        t2 = clock()
        vectors = np.asarray(raw, dtype=np.float32)
        vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        columns = np.asarray(featurizer.embed_weight * vectors, dtype=np.float64)
        t3 = clock()
        blocks = [v(batch) for v in vectorizers]
        t4 = clock()
        rows = fastpath.Rows(blocks + [columns], columns / featurizer.embed_weight)
        proba = (1 - prior) * head(rows) + prior * model.zero_shot_of(rows.embeddings)
        t5 = clock()
        reply = prediction_rows(batch, proba, model.classes_, loaded.version)[0]
        JSONResponse({**{k: v for k, v in reply.items() if k not in ("text", "model_version")}, "model_version": loaded.version})
        t6 = clock()
        for key, a, b in (("parse", t0, t1), ("encoder run", t1, t2), ("embedding rest", t2, t3), ("tf-idf", t3, t4),
                          ("head + prior", t4, t5), ("rows + json", t5, t6), ("sum", t0, t6)):
            out[key].append(b - a)
    return out


def use_session(threads: int, spinning: bool):
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    from synthloop.learn.embed import use_file

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(str(use_file()), options, providers=["CPUExecutionProvider"])


def timed(run, texts: list[str]) -> dict:
    """One repetition: wall p50 per text and process CPU per text (all threads: the worker's too)."""
    cpu0, walls = time.process_time(), []
    load = os.getloadavg()[0]
    for text in texts:
        start = time.perf_counter()
        run(text)
        walls.append(time.perf_counter() - start)
    return {"wall_p50_ms": 1000 * statistics.median(walls), "cpu_ms": 1000 * (time.process_time() - cpu0) / len(texts),
            "load_before": load, "load_after": os.getloadavg()[0]}


def one_text(predict_proba):
    return lambda text: predict_proba([text])


def interleaved(runs: dict, texts: list[str], reps: int) -> dict:
    out: dict[str, list[dict]] = {k: [] for k in runs}
    for _ in range(reps):
        for name, run in runs.items():
            for text in texts[:10]:
                run(text)
            out[name].append(timed(run, texts))
    return out


def summary(reps: list[dict]) -> dict:
    return {k: {"min": min(r[k] for r in reps), "median": statistics.median(r[k] for r in reps)}
            for k in ("wall_p50_ms", "cpu_ms")}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# One warm hybrid-lr prediction, in-process (`scripts/profile_serve.py`)", "",
             f"{m['cpus']} CPUs ({m['machine']}), Python {m['python']}, onnxruntime {m['onnxruntime']}, load average "
             f"{m['load_min']:.1f} to {m['load_max']:.1f} over the run (shared machine; per repetition in the JSON). "
             f"{result['texts']} SMS test texts one at a time (mean {result['mean_chars']:.0f} characters), "
             f"{result['reps']} repetitions; no HTTP (`benchmarks/serve-quick.md` has the server).", "",
             "## Stages of the server's direct route (thread CPU ms per text)", "",
             "| stage | median | mean |", "|---|---:|---:|"]
    for name, s in result["stages"].items():
        lines.append(f"| {name} | {s['median_ms']:.3f} | {s['mean_ms']:.3f} |")
    lines += ["", "Each stage timed alone; the sum is of the same texts' stages (medians do not add up).", "",
              "## The sentence encoder's onnxruntime session (one text per run)", "",
              "| session | wall p50 ms (min / median) | CPU ms per text (min / median) |", "|---|---:|---:|"]
    for name, reps in result["encoder"].items():
        s = summary(reps)
        lines.append(f"| {name} | {s['wall_p50_ms']['min']:.2f} / {s['wall_p50_ms']['median']:.2f} | "
                     f"{s['cpu_ms']['min']:.2f} / {s['cpu_ms']['median']:.2f} |")
    lines += ["", "Outputs of every session equal to the 1-thread session's: max abs difference "
              f"{result['encoder_max_diff']:.1e}.", "",
              "| text | encoder CPU ms per run (min over repetitions) |", "|---|---:|"]
    for name, ms in result["by_length"].items():
        lines.append(f"| {name} | {ms:.2f} |")
    lines += ["", "## The whole direct route (fast predict_proba, one text)", "",
              "| route | wall p50 ms (min / median) | CPU ms per text, all threads (min / median) |", "|---|---:|---:|"]
    for name, reps in result["route"].items():
        s = summary(reps)
        lines.append(f"| {name} | {s['wall_p50_ms']['min']:.2f} / {s['wall_p50_ms']['median']:.2f} | "
                     f"{s['cpu_ms']['min']:.2f} / {s['cpu_ms']['median']:.2f} |")
    lines += ["", f"The route's probabilities equal the model's predict_proba (to 1e-9): {result['route_equal']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    if args.reps < 3:
        parser.error("--reps must be at least 3 (min and median over repetitions)")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import onnxruntime as ort
    from threadpoolctl import threadpool_limits

    from synthloop.serve.fastpath import fast_predict_proba

    threadpool_limits(limits=1, user_api="blas")  # as `synthloop serve` does
    texts = pd.read_csv(ROOT / "examples" / "sms_spam" / "test.csv").text.tolist()[:args.texts]
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="profile-serve-") as tmp:
        source, loaded = load_model(Path(tmp))
        try:
            loaded.predict(texts[:20])
            per_stage: dict[str, list[float]] = {}
            for _ in range(args.reps):
                for k, v in stages(loaded, texts).items():
                    per_stage.setdefault(k, []).extend(v)
            sessions = {"1 thread": use_session(1, True), "2 threads, spinning off": use_session(2, False),
                        "2 threads, spinning on": use_session(2, True)}

            def runner(session):
                return lambda t: session.run(["outputs"], {"inputs": np.array([t], dtype=object)})

            first = [runner(sessions["1 thread"])(t)[0] for t in texts[:50]]
            diff = max(float(np.abs(runner(s)(t)[0] - f).max()) for s in sessions.values() for t, f in zip(texts, first))
            encoder = interleaved({k: runner(s) for k, s in sessions.items()}, texts, args.reps)
            by_length = {}
            for name, text in LENGTHS.items():
                run = runner(sessions["1 thread"])
                by_length[name] = min(timed(run, [text] * 100)["cpu_ms"] for _ in range(args.reps))
            routes = {"sequential (served)": fast_predict_proba(loaded.model)}
            equal = bool(np.allclose(routes["sequential (served)"](texts), loaded.model.predict_proba(texts), rtol=0, atol=1e-9))
            route = interleaved({k: one_text(f) for k, f in routes.items()}, texts, args.reps)
        finally:
            source.close()
    loads += [r[k] for block in (encoder, route) for reps in block.values() for r in reps for k in ("load_before", "load_after")]
    loads.append(os.getloadavg()[0])
    result = {"machine": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                          "onnxruntime": ort.__version__, "load_min": min(loads), "load_max": max(loads)},
              "reps": args.reps, "texts": len(texts), "mean_chars": float(np.mean([len(t) for t in texts])),
              "stages": {k: {"median_ms": 1000 * statistics.median(v), "mean_ms": 1000 * statistics.mean(v)}
                         for k, v in per_stage.items()},
              "encoder": encoder, "encoder_max_diff": diff, "by_length": by_length, "route": route, "route_equal": equal,
              "generated_at": time.time()}
    args.out.mkdir(exist_ok=True)
    (args.out / "serve-profile.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "serve-profile.md").write_text(markdown(result))
    print((args.out / "serve-profile.md").read_text())


if __name__ == "__main__":
    main()
