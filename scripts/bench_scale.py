"""Rounds at scale: synthloop's round (train + score + select 100, from its store and its stored feature rows)
against small-text's PoolBasedActiveLearner with the same classifier and strategy, training included on both
sides; the `synthloop round` CLI on the 2k example pool; predictions per 1k texts; feature-row file formats.

    nice -n 10 .venv/bin/python scripts/bench_scale.py --sizes 100000 --reps 3   # benchmarks/scale.json + .md

Pools are generated in a temporary folder by resampling and perturbing the texts of /work/shared/data/*/train.csv
(each keeps its source text's label, which the oracle answers from); pools up to 100k rows are imported with
`Project.import_file`, bigger ones written straight into the store's SQLite table as import would store them
(`write_pool_rows`: import costs about 0.35 ms CPU a row, an hour at 5M). Both sides start from the same 1,000
labeled texts and the same unlabeled pool (read back from the synthloop store, in id order), train the same
plain logistic regression (hashing-lr, C=4, class_weight=balanced, uncalibrated) and select 100 by margin
(small-text: BreakingTies, the same measure), then label their picks from the same gold labels: round 1 is the
first round from raw texts, rounds 2-5 the next four. Every measurement is its own child process, run
interleaved (synthloop, small-text, synthloop, ...), and its process tree is sampled for proportional set size
(PSS) every 0.25 s; CPU seconds are the child's own (user + system, from the OS), beside wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SYNTHLOOP_SHARED_DATA", ROOT.parent / "shared" / "data"))
K = 100
N_LABELS = 1000
ROUNDS = 5
IMPORT_MAX_ROWS = 100_000  # bigger pools are written straight into the store (write_pool_rows)
CLI_ROUNDS = int(os.environ.get("BENCH_CLI_ROUNDS", "4"))


# Data ---------------------------------------------------------------------------------------------

def source_texts() -> tuple[list[str], list[str]]:
    import pandas as pd

    texts, labels = [], []
    for path in sorted(DATA.glob("*/train.csv")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        texts += frame.text.tolist()
        # Two classes across the three data sets.
        labels += ["a" if label in ("spam", "World", "Sports", "Negative", "Extremely Negative") else "b"
                   for label in frame.label]
    if not texts:
        sys.exit(f"no train.csv under {DATA}; the benchmark needs the shared data sets")
    return texts, labels


def perturbed(texts, labels, words, n, rng) -> tuple[list[str], list[str]]:
    """n new texts: a random source text, cut to at most 30 words, one word dropped, two random words added."""
    rows = rng.integers(0, len(texts), n).tolist()
    drop = rng.random(n).tolist()
    extra = rng.integers(0, len(words), (n, 2)).tolist()
    out = []
    for r, d, (a, b) in zip(rows, drop, extra):
        tokens = texts[r].split()[:30]
        if len(tokens) > 3:
            del tokens[int(d * len(tokens))]
        out.append(" ".join(tokens) + f" {words[a]} {words[b]}")
    return out, [labels[r] for r in rows]


def make_template(folder: Path, size: int, texts, labels, words) -> dict:
    """A project with `size` unlabeled pool texts (gold labels hidden, for the oracle) and N_LABELS labeled ones.
    With BENCH_TEMPLATES set, templates are kept in that folder and reused by later runs (the same seed makes
    the same pool), so a 1M or 5M pool is imported once."""
    kept = os.environ.get("BENCH_TEMPLATES")
    if kept:
        cached = Path(kept) / folder.name
        if not (cached / "info.json").is_file():
            shutil.rmtree(cached, ignore_errors=True)
            info = _make_template(cached, size, texts, labels, words)
            (cached / "info.json").write_text(json.dumps(info))
        shutil.copytree(cached, folder)
        return json.loads((cached / "info.json").read_text())
    return _make_template(folder, size, texts, labels, words)


def _make_template(folder: Path, size: int, texts, labels, words) -> dict:
    import pandas as pd

    from synthloop import Project
    from synthloop.task import TaskSpec

    rng = np.random.default_rng(size)
    pool, gold = perturbed(texts, labels, words, size, rng)
    chosen = rng.choice(len(texts), N_LABELS, replace=False)
    folder.mkdir(parents=True)
    if size <= IMPORT_MAX_ROWS:
        pd.DataFrame({"text": pool, "label": gold}).to_csv(folder / "pool.csv", index=False)
    pd.DataFrame({"text": [texts[i] for i in chosen], "label": [labels[i] for i in chosen]}).to_csv(folder / "labeled.csv", index=False)
    task = TaskSpec.model_validate({"name": "bench", "description": "two classes",
                                    "labels": [{"name": "a"}, {"name": "b"}]})
    project = Project.init(folder / "project", task, model={"name": "hashing-lr", "calibrate": False},
                           loop={"batch_size": K, "strategy": "margin", "labeler": "oracle"})
    t = time.perf_counter()
    if size <= IMPORT_MAX_ROWS:
        project.import_file(folder / "pool.csv", label_col="label", gold=True)
    else:
        project.close()
        write_pool_rows(folder / "project" / ".synthloop" / "store.db", pool, gold)
        project = Project(folder / "project")
    project.import_file(folder / "labeled.csv", label_col="label")
    info = {"rows": {"/".join(k): n for k, n in project.store.count_examples().items()}, "import_seconds": round(time.perf_counter() - t, 1)}
    project.close()
    return info


def write_pool_rows(db: Path, pool: list[str], gold: list[str]) -> None:
    """The rows `synthloop import FILE --label-col label --gold` stores for these texts (id = hash of the cleaned
    text, first occurrence kept, gold label hidden, meta JSON null), written with one executemany in id order:
    import takes about 0.35 ms of CPU per row here (SQLAlchemy parameters, two passes over the file), an hour for
    5M rows, and how fast a pool is imported is not what this benchmark measures."""
    import sqlite3

    from synthloop.data import example_id

    rows: dict[str, tuple[str, str]] = {}
    for text, label in zip(pool, gold):
        text = text.replace("\x00", "").strip()
        if text:
            rows.setdefault(example_id(text), (text, label))
    now = time.time()
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany("INSERT OR IGNORE INTO examples (id, text, origin, split, gold, meta, created_at) "
                         "VALUES (?, ?, 'pool', 'pool', ?, 'null', ?)",
                         ((eid, text, label, now) for eid, (text, label) in sorted(rows.items())))
    conn.close()


# Children: one measurement each -------------------------------------------------------------------

def _clock():
    return time.perf_counter(), time.process_time()


def _since(start) -> dict:
    wall, cpu = _clock()
    return {"wall": wall - start[0], "cpu": cpu - start[1]}


def child_synthloop(template: str, work: str) -> dict:
    from synthloop import Project

    shutil.copytree(template, work)
    rounds = []
    for _ in range(ROUNDS):
        start = _clock()
        mono = time.monotonic()  # the parent's PSS samples are on this clock: peaks per round
        project = Project(work)  # a fresh Project each round, as each `synthloop round` process opens one
        result = project.round()
        timing = _since(start)
        picks = sorted(q.example_id for q in project.store.queries(round_=result.number))
        rounds.append({**timing, "picks": picks, "span": [mono, time.monotonic()],
                       "timings": project.store.round(result.number).timings,
                       "featurized": getattr(project.trainer.row_store, "featurized", None)})
        project.close()
    rows_dir = Path(work) / ".synthloop" / "feature_rows"
    rows_bytes = sum(p.stat().st_size for p in rows_dir.rglob("*") if p.is_file())
    return {"rounds": rounds, "feature_rows_mb": round(rows_bytes / 2**20, 1)}


def child_small_text(template: str) -> dict:
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from small_text import BreakingTies, PoolBasedActiveLearner, SklearnClassifierFactory, SklearnDataset

    from synthloop import Project
    from synthloop.learn.models import make_featurizer

    project = Project(template)
    labeled = project.store.training_set()
    ids, texts = project.store.unlabeled_pool()
    gold = project.store.gold_for(ids)
    project.close()
    all_ids = [r.example_id for r in labeled] + ids
    all_texts = [r.text for r in labeled] + texts
    y_true = np.array([0 if (r.label if i < len(labeled) else gold[all_ids[i]]) == "a" else 1
                       for i, r in enumerate(labeled + [None] * len(ids))])
    rounds = []
    start = _clock()
    # small-text holds the whole pool as one feature matrix.
    X = sp.csr_matrix(make_featurizer("hashing-lr").transform(all_texts))
    vectorize = _since(start)
    y = np.full(len(all_texts), -1)  # small-text's marker for an unlabeled row
    y[:len(labeled)] = y_true[:len(labeled)]
    base = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced")
    learner = PoolBasedActiveLearner(SklearnClassifierFactory(base, 2), BreakingTies(),
                                     SklearnDataset(X, y, target_labels=np.array([0, 1])))
    t = _clock()
    learner.initialize_data(np.arange(len(labeled)), y_true[:len(labeled)])
    train = _since(t)
    queried = np.arange(0)  # the previous round's picks; round 0 has none to update with
    for number in range(ROUNDS):
        if number:
            start = _clock()
            learner.update(y_true[queried])
        queried = learner.query(num_samples=K)
        rounds.append({**_since(start), "picks": sorted(all_ids[i] for i in queried)})
    rounds[0].update(vectorize=vectorize, train=train)
    return {"rounds": rounds, "matrix_mb": round((X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20, 1)}


def child_formats(template: str, work: str) -> dict:
    """Reading a pool's stored rows back: memory-mapped .npy (what synthloop keeps) against .npz archives."""
    import scipy.sparse as sp

    from synthloop import Project
    from synthloop.learn.feature_rows import FeatureRows
    from synthloop.learn.models import make_featurizer

    project = Project(template)
    ids, texts = project.store.unlabeled_pool()
    project.close()
    featurizer = make_featurizer("hashing-lr")
    rows = FeatureRows(Path(work) / "npy", "bench", featurizer)
    t = time.perf_counter()
    rows.get(ids, texts)
    build = time.perf_counter() - t
    npz = Path(work) / "npz"
    npz.mkdir()
    for chunk in sorted(rows.dir.glob("chunk-*")):
        sp.save_npz(npz / f"{chunk.name}.npz", rows.chunk(int(chunk.name.split("-")[1])), compressed=False)
    result = {"build_seconds": build, "npy_mb": rows.disk_bytes() / 2**20,
              "npz_mb": sum(p.stat().st_size for p in npz.iterdir()) / 2**20, "npy_read": [], "npz_read": []}
    for _ in range(3):
        fresh = FeatureRows(Path(work) / "npy", "bench", featurizer)
        t = time.perf_counter()
        fresh.get(ids, texts)
        result["npy_read"].append(time.perf_counter() - t)
        t = time.perf_counter()
        sp.vstack([sp.load_npz(p) for p in sorted(npz.iterdir())], format="csr")
        result["npz_read"].append(time.perf_counter() - t)
    return result


def child_predict(project_dir: str) -> dict:
    """Predictions in a running process: 1k texts at once, and one text at a time."""
    from synthloop import Project

    project = Project(project_dir)
    _, model = project.load_model()
    texts = project.store.unlabeled_pool(limit=1000)[1]
    project.close()
    model.predict_proba(texts[:10])  # warm
    batch, single = [], []
    for _ in range(5):
        t = time.perf_counter()
        model.predict_proba(texts)
        batch.append(time.perf_counter() - t)
    for text in texts[:200]:
        t = time.perf_counter()
        model.predict_proba([text])
        single.append(time.perf_counter() - t)
    return {"seconds_per_1k": batch, "single_ms_median": 1000 * statistics.median(single),
            "single_ms_min": 1000 * min(single)}


# Parent: run a child, sample its process tree -----------------------------------------------------

def tree_pss(proc) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(argv: list[str], timeout: float = 3600, cwd=None, json_out: bool = True) -> dict:
    """Run a command, sampling its tree's PSS; wall and CPU seconds (user + sys of the command and its children)."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    proc, peak, done = psutil.Process(child.pid), [0], threading.Event()
    series: list[tuple[float, int]] = []

    def sample():
        while not done.is_set():
            try:
                pss = tree_pss(proc)
            except psutil.NoSuchProcess:
                return
            peak[0] = max(peak[0], pss)
            series.append((time.monotonic(), pss))
            done.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate(timeout=timeout)
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if child.returncode != 0:
        raise RuntimeError(f"{argv} failed with status {child.returncode}: {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1]) if json_out else {}
    for r in result.get("rounds", []):  # the peak while each round ran (children that report their spans)
        span = r.pop("span", None)
        if span:
            r["peak_mb"] = round(max((m for t, m in series if span[0] <= t <= span[1]), default=0) / 2**20, 1)
    result.update(process_wall=wall, process_cpu=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
                  peak_mb=round(peak[0] / 2**20, 1), load_before=round(load, 2))
    return result


def child(*args: str) -> dict:
    return run_measured([sys.executable, __file__, "--child", *args])


def stats(values) -> dict:
    values = [float(v) for v in values]
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "n": len(values)}


def bench_solo(size: int, work: Path, texts, labels, words, results: dict) -> None:
    """synthloop alone, one repetition: its memory on a pool too big to compare against small-text here."""
    template = work / f"pool-{size}"
    info = make_template(template, size, texts, labels, words)
    results["pools"][str(size)] = info
    print(f"pool {size:,}: {info}", flush=True)
    syn = child("synthloop", str(template / "project"), str(work / f"syn-{size}"))
    shutil.rmtree(work / f"syn-{size}", ignore_errors=True)
    for r in syn["rounds"]:
        r.pop("picks")
    results["solo"][str(size)] = syn
    print(json.dumps({"size": size, "synthloop": [round(r["wall"], 2) for r in syn["rounds"]],
                      "peak_mb": [r.get("peak_mb") for r in syn["rounds"]]}), flush=True)
    shutil.rmtree(template, ignore_errors=True)


def bench_rounds(size: int, reps: int, work: Path, texts, labels, words, results: dict) -> None:
    template = work / f"pool-{size}"
    info = make_template(template, size, texts, labels, words)
    results["pools"][str(size)] = info
    print(f"pool {size:,}: {info}", flush=True)
    runs = []
    for rep in range(reps):
        syn = child("synthloop", str(template / "project"), str(work / f"syn-{size}-{rep}"))
        shutil.rmtree(work / f"syn-{size}-{rep}", ignore_errors=True)
        small = child("small-text", str(template / "project"))
        same = [a["picks"] == b["picks"] for a, b in zip(syn["rounds"], small["rounds"])]
        overlap = [len(set(a["picks"]) & set(b["picks"])) for a, b in zip(syn["rounds"], small["rounds"])]
        for side in (syn, small):
            for r in side["rounds"]:
                r.pop("picks")
        runs.append({"rep": rep, "synthloop": syn, "small_text": small, "same_picks": same, "overlap": overlap})
        print(json.dumps({"size": size, "rep": rep, "same_picks": same,
                          "synthloop": [round(r["wall"], 2) for r in syn["rounds"]],
                          "small_text": [round(r["wall"], 2) for r in small["rounds"]]}), flush=True)
    results["rounds"][str(size)] = {"runs": runs, "summary": summarize_rounds(runs)}
    if size <= IMPORT_MAX_ROWS:  # the file formats once, on the smaller pool: building the rows again costs minutes at 1M
        results["formats"][str(size)] = child("formats", str(template / "project"), str(work / f"formats-{size}"))
    shutil.rmtree(template, ignore_errors=True)


def summarize_rounds(runs: list[dict]) -> dict:
    out = {}
    for side in ("synthloop", "small_text"):
        first = [r[side]["rounds"][0] for r in runs]
        later = [r[side]["rounds"][1:] for r in runs]
        out[side] = {"round1_wall": stats(r["wall"] for r in first), "round1_cpu": stats(r["cpu"] for r in first),
                     "rounds2_5_wall": stats(sum(x["wall"] for x in rs) for rs in later),
                     "rounds2_5_cpu": stats(sum(x["cpu"] for x in rs) for rs in later),
                     "peak_mb": stats(r[side]["peak_mb"] for r in runs)}
        if all("peak_mb" in x for r in runs for x in r[side]["rounds"][1:]):
            out[side]["later_peak_mb"] = stats(max(x["peak_mb"] for x in r[side]["rounds"][1:]) for r in runs)
    small = [r["small_text"]["rounds"][0] for r in runs]
    out["vectorize_plus_train_wall"] = stats(r["vectorize"]["wall"] + r["train"]["wall"] for r in small)
    out["same_picks_all_rounds"] = all(all(r["same_picks"]) for r in runs)
    out["min_overlap"] = min(min(r["overlap"]) for r in runs)
    return out


def bench_cli(reps: int, work: Path, results: dict) -> None:
    """`synthloop round` as a user runs it on the example pool: a new process per round."""
    env_python = sys.executable
    rounds = []
    for rep in range(reps):
        folder = work / f"cli-{rep}"
        init = [env_python, "-m", "synthloop", "init", str(folder), "--task", str(ROOT / "examples/sms_spam/task.toml")]
        subprocess.run(init, check=True, capture_output=True)
        for args in (["import", str(ROOT / "examples/sms_spam/pool.csv"), "--label-col", "label", "--gold"],
                     ["import", str(ROOT / "examples/sms_spam/test.csv"), "--label-col", "label", "--split", "test"]):
            subprocess.run([env_python, "-m", "synthloop", *args], check=True, capture_output=True, cwd=folder)
        per = []
        for _ in range(CLI_ROUNDS):
            per.append(run_measured([env_python, "-m", "synthloop", "round"], cwd=folder, json_out=False))
        rounds.append(per)
        if rep == 0:
            results["predict"] = child("predict", str(folder))
    default_folder = work / "cli-0"
    # embed-lr: round 1 embeds the pool and the test set once; later rounds read the stored rows.
    folder = work / "cli-embed"
    subprocess.run([env_python, "-m", "synthloop", "init", str(folder), "--task", str(ROOT / "examples/sms_spam/task.toml"),
                    "--model", "embed-lr"], check=True, capture_output=True)
    for args in (["import", str(ROOT / "examples/sms_spam/pool.csv"), "--label-col", "label", "--gold"],
                 ["import", str(ROOT / "examples/sms_spam/test.csv"), "--label-col", "label", "--split", "test"]):
        subprocess.run([env_python, "-m", "synthloop", *args], check=True, capture_output=True, cwd=folder)
    embed_rounds = [run_measured([env_python, "-m", "synthloop", "round"], cwd=folder, json_out=False) for _ in range(3)]
    results["predict_embed"] = child("predict", str(folder))
    # predict through the CLI, 1k texts from a file: the whole process, start-up and model load included.
    texts_file = work / "predict-1k.txt"
    import pandas as pd

    texts_file.write_text("\n".join(t.replace("\n", " ") for t in pd.read_csv(ROOT / "examples/sms_spam/pool.csv").text[:1000]) + "\n")
    cli_predict = {name: [run_measured([env_python, "-m", "synthloop", "predict", "--file", str(texts_file), "--json"],
                                       cwd=where, json_out=False) for _ in range(reps)]
                   for name, where in (("hybrid-lr", default_folder), ("embed-lr", folder))}
    imports = [run_measured([env_python, "-c", "import synthloop.cli.main"], json_out=False) for _ in range(reps)]
    results["cli"] = {
        "pool": "examples/sms_spam (2,000 pool texts, 500 test), hybrid-lr (the default model: TF-IDF and USE embeddings), batch 25, oracle",
        "runs": rounds,
        "first_round_wall": stats(r[0]["process_wall"] for r in rounds),
        "first_round_cpu": stats(r[0]["process_cpu"] for r in rounds),
        "later_round_wall": stats(x["process_wall"] for r in rounds for x in r[1:]),
        "later_round_cpu": stats(x["process_cpu"] for r in rounds for x in r[1:]),
        "embed_runs": embed_rounds,
        "embed_first_round_wall": stats([embed_rounds[0]["process_wall"]]),
        "embed_first_round_cpu": stats([embed_rounds[0]["process_cpu"]]),
        "embed_later_round_wall": stats(x["process_wall"] for x in embed_rounds[1:]),
        "embed_later_round_cpu": stats(x["process_cpu"] for x in embed_rounds[1:]),
        "predict_cli": {name: {"wall": stats(x["process_wall"] for x in runs), "cpu": stats(x["process_cpu"] for x in runs)}
                        for name, runs in cli_predict.items()},
        "import_cli_wall": stats(r["process_wall"] for r in imports),
        "import_cli_cpu": stats(r["process_cpu"] for r in imports),
    }


def run(sizes, reps, out_prefix: Path, solo_sizes=(), cli: bool = True) -> dict:
    texts, labels = source_texts()
    rng = np.random.default_rng(0)
    words = " ".join(texts[i] for i in rng.choice(len(texts), 3000, replace=False)).split()
    work = Path(tempfile.mkdtemp(prefix="synthloop-bench-scale-"))
    results = {"machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                           "processor": platform.processor() or platform.machine()},
               "settings": {"k": K, "labels": N_LABELS, "rounds": ROUNDS, "reps": reps,
                            "model": "hashing-lr, LogisticRegression(C=4, class_weight=balanced), uncalibrated",
                            "strategy": "margin (small-text: BreakingTies)"},
               "load_start": os.getloadavg(), "pools": {}, "rounds": {}, "formats": {}, "solo": {}}
    def save() -> None:  # after every part, so that a run stopped early keeps what it measured
        results["load_end"] = os.getloadavg()
        out_prefix.parent.mkdir(parents=True, exist_ok=True)
        out_prefix.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        out_prefix.with_suffix(".md").write_text(markdown(results))

    try:
        for size in sizes:
            bench_rounds(size, reps, work, texts, labels, words, results)
            save()
        if cli:
            bench_cli(reps, work, results)
            save()
        for size in solo_sizes:
            bench_solo(size, work, texts, labels, words, results)
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


# Report -------------------------------------------------------------------------------------------

def _mm(s: dict, unit: str = "s") -> str:
    return f"{s['min']:,} / {s['median']:,} {unit}"


def markdown(results: dict) -> str:
    m, st = results["machine"], results["settings"]
    loads = [r[k]["load_before"] for v in results["rounds"].values() for r in v["runs"] for k in ("synthloop", "small_text")]
    lines = [
        "# Rounds at scale",
        "",
        f"Generated by `scripts/bench_scale.py` (method in its docstring). Machine: {m['cpus']} cores ({m['processor']}), "
        f"Python {m['python']}, load average {results['load_start'][0]:.1f} at the start, "
        f"{results['load_end'][0]:.1f} at the end"
        + (f", {min(loads):.1f}-{max(loads):.1f} before the round measurements (per run in `scale.json`)" if loads else "")
        + f". Figures are min / median over {st['reps']} interleaved repetitions; on a loaded machine absolute seconds "
        "are several times an idle machine's, and ratios between the two sides (measured alternately) are the figures to trust.",
        "",
        f"Model: {st['model']}; strategy {st['strategy']}; {st['labels']:,} labels to start, {st['k']} picked and labeled "
        "per round. synthloop: `Project.round()` in a fresh `Project` per round (as each CLI process opens one), the "
        "pool read from its SQLite store, feature rows from `.synthloop/feature_rows` (built by round 1). small-text "
        "1.4.1: `PoolBasedActiveLearner`, its `initialize_data` / `update` retrain the model, `query` selects.",
        "",
        "| pool | side | round 1 wall | round 1 CPU | rounds 2-5 wall (sum) | rounds 2-5 CPU | peak PSS (MB) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for size, block in results["rounds"].items():
        s = block["summary"]
        for side, name in (("synthloop", "synthloop"), ("small_text", "small-text")):
            x = s[side]
            lines.append(f"| {int(size):,} | {name} | {_mm(x['round1_wall'])} | {_mm(x['round1_cpu'])} | "
                         f"{_mm(x['rounds2_5_wall'])} | {_mm(x['rounds2_5_cpu'])} | {_mm(x['peak_mb'], '')} |")
    lines.append("")
    for size, block in results["rounds"].items():
        s = block["summary"]
        syn, small = s["synthloop"], s["small_text"]
        run0 = block["runs"][0]
        lines += [
            f"At {int(size):,}: same picks in every round of every repetition: **{'yes' if s['same_picks_all_rounds'] else 'no'}** "
            f"(smallest overlap {s['min_overlap']}/{st['k']}). Later rounds (2-5, median): small-text "
            f"{small['rounds2_5_wall']['median']:.2f} s ÷ synthloop {syn['rounds2_5_wall']['median']:.2f} s = "
            f"**{small['rounds2_5_wall']['median'] / syn['rounds2_5_wall']['median']:.2f}×** wall "
            f"({small['rounds2_5_cpu']['median'] / syn['rounds2_5_cpu']['median']:.2f}× CPU). Round 1: synthloop "
            f"{syn['round1_wall']['median']:.2f} s against {s['vectorize_plus_train_wall']['median']:.2f} s for vectorizing "
            f"the pool once plus training (small-text's own vectorize + initialize, same repetitions): "
            f"{syn['round1_wall']['median'] / s['vectorize_plus_train_wall']['median']:.2f}×. Feature rows on disk "
            f"{run0['synthloop']['feature_rows_mb']} MB; small-text's matrix {run0['small_text']['matrix_mb']} MB.",
            "",
            "synthloop's per-step seconds in rounds 1-5 of the first repetition (from the store's round timings): "
            + "; ".join(", ".join(f"{k} {v:.2f}" for k, v in (r["timings"] or {}).items()) for r in run0["synthloop"]["rounds"]) + ".",
            "",
        ]
    for size, f in results["formats"].items():
        lines += [f"Feature-row files, {int(size):,} rows (hashing-lr): built in {f['build_seconds']:.1f} s; reading every row "
                  f"back, min / median of 3: memory-mapped `.npy` {stats(f['npy_read'])['min']:.2f} / "
                  f"{stats(f['npy_read'])['median']:.2f} s ({f['npy_mb']:.0f} MB), uncompressed `.npz` "
                  f"{stats(f['npz_read'])['min']:.2f} / {stats(f['npz_read'])['median']:.2f} s ({f['npz_mb']:.0f} MB). "
                  "`.npy` also lets a round read only the rows it asks for.", ""]
    for size, part in results.get("partial", {}).items():
        syn, small = part["synthloop"], part["small_text"]
        lines += [f"At {int(size):,}, **one repetition only** ({part['why']}): wall seconds per round 1-5, synthloop "
                  f"{', '.join(map(str, syn))}; small-text {', '.join(map(str, small))}; same picks in every round: "
                  f"{'yes' if all(part['same_picks']) else 'no'}. Rounds 2-5: small-text {sum(small[1:]):.1f} s ÷ synthloop "
                  f"{sum(syn[1:]):.1f} s = **{sum(small[1:]) / sum(syn[1:]):.2f}×** wall; round 1: synthloop {syn[0]} s, "
                  f"small-text (vectorize, train, select) {small[0]} s. CPU seconds and memory of that run were not kept.", ""]
    lines += memory_lines(results)
    cli = results.get("cli")
    if cli:
        p = results["predict"]
        lines += [
            "## The CLI and predictions",
            "",
            f"`synthloop round` on {cli['pool']}, a new process per round, {len(cli['runs'])} fresh projects × "
            f"{len(cli['runs'][0])} rounds: first round (fits TF-IDF, embeds, stores the rows) {_mm(cli['first_round_wall'])} wall, "
            f"{_mm(cli['first_round_cpu'])} CPU; later rounds (load the featurizer, read the rows) "
            f"{_mm(cli['later_round_wall'])} wall, {_mm(cli['later_round_cpu'])} CPU. `python -c 'import synthloop.cli.main'`: "
            f"{_mm(cli['import_cli_wall'])} wall, {_mm(cli['import_cli_cpu'])} CPU.",
            "",
            f"Predictions in a running process (hybrid-lr, calibrated, from that project): 1k texts in one call "
            f"{_mm(stats(p['seconds_per_1k']))}; one text per call {p['single_ms_min']:.2f} / {p['single_ms_median']:.2f} ms "
            "(min / median of 200).",
            "",
        ]
        if "embed_runs" in cli:
            e = results["predict_embed"]
            lines += [
                f"embed-lr (all-MiniLM-L6-v2, int8 ONNX) on the same pool, one fresh project, 3 rounds: round 1 (embeds "
                f"the pool and test set, stores the rows) {cli['embed_first_round_wall']['min']} s wall, "
                f"{cli['embed_first_round_cpu']['min']} s CPU; rounds 2-3 {_mm(cli['embed_later_round_wall'])} wall, "
                f"{_mm(cli['embed_later_round_cpu'])} CPU. In a running process: 1k texts "
                f"{_mm(stats(e['seconds_per_1k']))}; one text {e['single_ms_min']:.2f} / {e['single_ms_median']:.2f} ms.",
                "",
                "`synthloop predict --file` with 1k texts (the whole process: start-up, model load, predictions), "
                "min / median of " + f"{st['reps']}: " + "; ".join(
                    f"{name} {_mm(x['wall'])} wall, {_mm(x['cpu'])} CPU" for name, x in cli["predict_cli"].items()) + ".",
                "",
            ]
    return "\n".join(lines + targets(results))


GPT4O_SECONDS = 0.75  # synthloop.report.impact's assumed GPT-4o request latency (0.5-1 s, not measured here)


def memory_lines(results: dict) -> list[str]:
    """Peak PSS of synthloop's process tree per pool size: over the whole child, and over its later rounds."""
    rows = []
    for size, block in results["rounds"].items():
        syn = block["summary"]["synthloop"]
        rows.append((int(size), syn["peak_mb"]["median"], syn.get("later_peak_mb", {}).get("median"), f"median of {syn['peak_mb']['n']}"))
    for size, syn in results.get("solo", {}).items():
        later = [r["peak_mb"] for r in syn["rounds"][1:] if "peak_mb" in r]
        rows.append((int(size), syn["peak_mb"], max(later) if later else None, "one run"))
    if not rows:
        return []
    out = ["## Memory against pool size", "",
           "synthloop's peak PSS (process tree, sampled every 0.25 s), rounds 1-5 and rounds 2-5 alone:", "",
           "| pool | peak, rounds 1-5 (MB) | peak, rounds 2-5 (MB) | |", "|---:|---:|---:|---|"]
    for size, peak, later, note in sorted(rows):
        out.append(f"| {size:,} | {peak} | {later if later is not None else '-'} | {note} |")
    solo = results.get("solo", {})
    if solo:
        out.append("")
        out.append("synthloop alone (one repetition): " + "; ".join(
            f"{int(size):,} rows: round 1 {syn['rounds'][0]['wall']:.1f} s wall / {syn['rounds'][0]['cpu']:.1f} s CPU, "
            f"rounds 2-5 {sum(r['wall'] for r in syn['rounds'][1:]):.1f} s wall / {sum(r['cpu'] for r in syn['rounds'][1:]):.1f} s CPU, "
            f"feature rows {syn['feature_rows_mb']} MB" for size, syn in solo.items()) + ".")
    return out + [""]


def targets(results: dict) -> list[str]:
    out = ["## Against the targets of issue 12", ""]
    sizes = sorted(int(k) for k in results["rounds"])
    if sizes:
        size = max(sizes)
        s = results["rounds"][str(size)]["summary"]
        later = s["small_text"]["rounds2_5_wall"]["median"] / s["synthloop"]["rounds2_5_wall"]["median"]
        later_cpu = s["small_text"]["rounds2_5_cpu"]["median"] / s["synthloop"]["rounds2_5_cpu"]["median"]
        first = s["synthloop"]["round1_wall"]["median"] / s["vectorize_plus_train_wall"]["median"]
        verdict = "not measured at 1M" if size < 1_000_000 else ("met" if later >= 10 else "not met")
        part = results.get("partial", {}).get("1000000")
        if size < 1_000_000 and part:
            one = sum(part["small_text"][1:]) / sum(part["synthloop"][1:])
            verdict = f"not met in the one 1M repetition run ({one:.2f}x wall)"
        out.append(f"- Later rounds at 1M >= 10x faster than small-text: **{verdict}** "
                   f"(at {size:,}: {later:.2f}x wall, {later_cpu:.2f}x CPU, median; same picks: "
                   f"{'yes' if s['same_picks_all_rounds'] else 'no'}).")
        out.append(f"- Round 1 <= 1.2x vectorizing the pool once plus training: **{'met' if first <= 1.2 else 'not met'}** at {size:,} "
                   f"({first:.2f}x, wall, median).")
    peaks = {int(k): v["summary"]["synthloop"]["peak_mb"]["median"] for k, v in results["rounds"].items()}
    peaks.update({int(k): v["peak_mb"] for k, v in results.get("solo", {}).items()})
    if peaks and max(peaks) >= 5_000_000 and min(peaks) <= 100_000:
        lo, hi = peaks[min(peaks)], peaks[max(peaks)]
        out.append(f"- Memory flat from 100k to 5M: **{'met' if hi <= 1.25 * lo else 'not met'}** (peak PSS {lo} MB at "
                   f"{min(peaks):,}, {hi} MB at {max(peaks):,}; 'flat' read as within 25%).")
    elif peaks:
        out.append(f"- Memory flat from 100k to 5M: **not measured** (pools measured: {', '.join(f'{x:,}' for x in sorted(peaks))}).")
    cli = results.get("cli")
    if not cli:
        out.append("- `synthloop round` on the 2k pool, `import synthloop.cli`, embed-lr CLI rounds, single predictions: "
                   "**not measured by this run** (it was stopped before its CLI part).")
    if cli:
        wall, cpu = cli["later_round_wall"]["median"], cli["later_round_cpu"]["median"]
        load = f"load average {results['load_start'][0]:.1f}-{results['load_end'][0]:.1f}"
        out.append(f"- `synthloop round` on the 2k example pool < 1.5 s wall on an idle machine: **{'met' if wall < 1.5 else 'not met'}** "
                   f"({wall} s wall, {cpu} s CPU, median of the later rounds, at {load}; CPU seconds "
                   f"{'below' if cpu < 1.5 else 'above'} 1.5 s bound what an idle machine's wall time can be).")
        out.append(f"- `import synthloop.cli` < 0.5 s: **{'met' if cli['import_cli_wall']['median'] < 0.5 else ('met in CPU seconds' if cli['import_cli_cpu']['median'] < 0.5 else 'not met')}** "
                   f"({cli['import_cli_cpu']['median']} s CPU, {cli['import_cli_wall']['median']} s wall, median).")
        if "embed_runs" in cli:
            e = cli["embed_later_round_wall"]["median"]
            out.append(f"- embed-lr CLI round 2 does not re-embed (< 2 s on the 2k pool): **{'met' if e < 2 else 'not met'}** "
                       f"({e} s wall, at {load}, {cli['embed_later_round_cpu']['median']} s CPU, median of rounds 2-3, against "
                       f"{cli['embed_first_round_wall']['min']} s for round 1).")
        p = results["predict"]
        out.append(f"- Single prediction >= 100x below GPT-4o's latency: **{'met' if GPT4O_SECONDS * 1000 / p['single_ms_median'] >= 100 else 'not met'}** "
                   f"by the median ({p['single_ms_median']:.1f} ms: {GPT4O_SECONDS * 1000 / p['single_ms_median']:.0f}x below "
                   f"{GPT4O_SECONDS} s; by the fastest call, {p['single_ms_min']:.1f} ms, {GPT4O_SECONDS * 1000 / p['single_ms_min']:.0f}x). "
                   f"The GPT-4o figure is synthloop.report.impact's assumption (a typical 0.5-1 s request), not a measurement.")
    return out + [""]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        fn = {"synthloop": child_synthloop, "small-text": child_small_text, "formats": child_formats,
              "predict": child_predict}[kind]
        print(json.dumps(fn(*rest)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--solo-sizes", type=int, nargs="*", default=[],
                        help="pools measured for synthloop alone, one repetition (its memory at 5M)")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI and prediction measurements")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "scale", help="prefix of the .json and .md written")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the existing .json")
    args = parser.parse_args()
    if args.markdown_only:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.with_suffix(".json").read_text())))
        return
    run(args.sizes, args.reps, args.out, args.solo_sizes, not args.no_cli)


if __name__ == "__main__":
    main()
