"""The unattended nightly job: new pool files -> collect labels -> (re)train -> evaluate -> top up ->
score what changed -> select -> route, under a lock, within label and $ budgets, with a run record."""

from __future__ import annotations

import fcntl
import glob
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

from synthloop.errors import SynthloopError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75  # 75 = EX_TEMPFAIL: "try again later" to a scheduler
POOL_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".pq")
ENGINES = ("local", "ray")


class Locked(SynthloopError):
    """Another run holds the project's lock."""


@contextmanager
def project_lock(state_dir: Path):
    """An exclusive flock on .synthloop/nightly.lock; the OS drops it when the holder dies, even on kill -9."""
    path = state_dir / "nightly.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise Locked(f"another synthloop run holds {path} (pid {holder}); this run did nothing — try again later") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def pool_files(pattern: str) -> list[Path]:
    path = Path(pattern)
    if path.is_dir():
        found = [p for p in sorted(path.iterdir()) if p.suffix.lower() in POOL_SUFFIXES]
    else:
        found = [Path(p) for p in sorted(glob.glob(pattern))]
    return [p.resolve() for p in found if p.is_file()]


def new_files(project, pattern: str) -> list[Path]:
    """Files not seen before, or changed since (size or modification time)."""
    fresh = []
    for path in pool_files(pattern):
        stat = path.stat()
        seen = project.store.pool_file(str(path))
        if seen is None or seen["size"] != stat.st_size or seen["mtime"] != stat.st_mtime:
            fresh.append(path)
    return fresh


def _logger(log_file: Path | None) -> logging.Logger:
    log = logging.getLogger("synthloop.nightly")
    log.setLevel(logging.INFO)
    log.handlers.clear()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    return log


def check_options(project, labeler: str, engine: str | None, address: str | None) -> None:
    """Refuse bad options before anything is done, each with the fix: a scheduler gets exit status 2 at once,
    not a failure after an hour of importing and training."""
    from synthloop.labelers import LABELERS

    if labeler not in LABELERS:
        raise SynthloopError(f"unknown labeler {labeler!r}; choose --labeler one of {', '.join(LABELERS)}")
    if engine is None:
        if address:
            raise SynthloopError("--address names the Ray cluster to score on; add --engine ray (or drop --address)")
        return
    if engine not in ENGINES:
        raise SynthloopError(f"unknown engine {engine!r}; choose --engine local (every core of this machine) or "
                             "--engine ray (a Ray cluster), or leave --engine out to score the pool in memory")
    if address and engine != "ray":
        raise SynthloopError(f"--address is for --engine ray; --engine {engine} scores on this machine (drop --address)")
    from synthloop import scale

    strategy = project.config.loop.strategy
    if strategy not in scale.STRATEGIES:
        raise SynthloopError(f"strategy {strategy!r} cannot be streamed by --engine; set [loop] strategy in "
                             f"synthloop.toml to one of {', '.join(scale.STRATEGIES)}, or leave --engine out")
    if engine == "ray":
        scale._import_ray()  # a missing Ray is named now, with the extra to install
        if address:
            scale.check_ray_address(address)


def run_nightly(project, pool: str | None = None, dry_run: bool = False, max_labels: int | None = None,
                max_cost: float | None = None, labeler: str | None = None, text_col: str = "text",
                id_col: str | None = None, log_file: Path | None = None, engine: str | None = None,
                address: str | None = None) -> dict:
    """One nightly run; returns its summary. Safe to re-run after a crash: every step resumes from the store.

    engine: None scores the pool in memory, with scores cached per model version (only what changed is
    scored); "local" or "ray" streams the whole unlabeled pool from the store through synthloop.scale
    (every core, or the Ray cluster at `address`), for pools too big for that."""
    from synthloop.labelers.batch import jobs as batch_jobs

    log = _logger(log_file if log_file is not None else project.state_dir / "logs" / "nightly.log")
    cfg = project.config.loop
    labeler = labeler or cfg.labeler
    check_options(project, labeler, engine, address)
    with project_lock(project.state_dir):
        files = new_files(project, pool) if pool else []
        pending = project.store.query_counts().get("pending", 0)
        n = cfg.batch_size if max_labels is None else min(cfg.batch_size, max_labels)
        plan = {"new_files": [str(f) for f in files], "pending_queries": pending, "retrain": None,
                "select": n, "labeler": labeler, "max_cost": max_cost, "engine": engine, "address": address}
        if dry_run:
            plan["retrain"] = project.training_changed() or bool(files)
            log.info("dry run: %s", json.dumps(plan))
            return {"dry_run": True, **plan}

        project.store.mark_killed_runs("nightly")  # we hold the lock: any run still "running" died
        run_id = project.store.start_run("nightly")
        start = time.perf_counter()
        log.info("run %s started: %d new pool files, %d pending queries", run_id, len(files), pending)
        try:
            imported = 0
            for path in files:
                result = project.import_file(path, text_col=text_col, id_col=id_col, split="pool")
                stat = path.stat()
                project.store.record_pool_file(str(path), stat.st_size, stat.st_mtime, result.rows, result.added)
                imported += result.added
                log.info("imported %s: %d new examples", path, result.added)
            project.llm_budget, project.last_scored = max_cost, 0
            retrain = project.training_changed()
            latest = project.store.latest_model()
            spent_before = sum(u["cost"] for u in project.store.llm_usage())
            jobs_before = set(batch_jobs(project.store, states=("open", "answered", "done")))
            result = project.round(n=n, labeler=labeler, incremental=True, retrain=retrain, engine=engine, address=address)
            spent = sum(u["cost"] for u in project.store.llm_usage()) - spent_before
            new_jobs = [job for key, job in batch_jobs(project.store, states=("open", "answered", "done")).items()
                        if key not in jobs_before]
            summary = {
                "run": run_id, "status": "done", "new_files": len(files), "imported": imported,
                "labels_collected": result.labels_collected,
                # Labels that arrived during the round (a Batch API job, a reviewer) retrain too.
                "retrained": latest is None or result.model_version != latest["version"],
                "model_version": result.model_version, "round": result.number, "queried": result.queried,
                "scored": getattr(project, "last_scored", None), "engine": engine or "memory",
                "labeler": labeler, "llm_cost": round(spent, 6), "pending": project.store.query_counts().get("pending", 0),
                # Submitted tonight, paid when the job ends: counted against tonight's budget at this estimate.
                "batch": {"submitted": sum(len(j["ids"]) for j in new_jobs),
                          "estimated_cost": round(sum(j["estimated_cost"] for j in new_jobs), 6),
                          "open_jobs": len(batch_jobs(project.store, states=("open",)))},
                "metrics": {k: (result.metrics or {}).get(k) for k in ("n_labels", "accuracy", "macro_f1")},
                "seconds": round(time.perf_counter() - start, 2),
            }
        except Exception as err:
            project.store.finish_run(run_id, "failed", {"error": str(err)})
            log.exception("run %s failed", run_id)
            raise
        project.store.finish_run(run_id, "done", summary)
        write_report(project, summary)
        log.info("run %s done: %s", run_id, json.dumps(summary))
        return summary


def write_report(project, summary: dict) -> Path:
    reports = project.state_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    metrics = summary["metrics"]
    lines = [f"# Nightly run {summary['run']}", "",
             f"- new pool files: {summary['new_files']} ({summary['imported']} new examples)",
             f"- labels collected: {summary['labels_collected']}; model v{summary['model_version']}"
             + (" (retrained)" if summary["retrained"] else " (unchanged: no new labels)"),
             f"- scored: {summary['scored']} examples ({summary['engine']}); queried: {summary['queried']} → {summary['labeler']}",
             f"- pending queries: {summary['pending']}; LLM cost: ${summary['llm_cost']:.4f}",
             *([(f"- Batch API: {summary['batch']['submitted']} queries submitted (estimated "
                 f"${summary['batch']['estimated_cost']:.4f}); {summary['batch']['open_jobs']} jobs running")]
               if summary["batch"]["submitted"] or summary["batch"]["open_jobs"] else []),
             f"- test accuracy: {metrics['accuracy'] if metrics['accuracy'] is not None else '-'} "
             f"with {metrics['n_labels']} real labels", f"- seconds: {summary['seconds']}", ""]
    path = reports / f"nightly-{summary['run']:04d}.md"
    path.write_text("\n".join(lines))
    (reports / f"nightly-{summary['run']:04d}.json").write_text(json.dumps(summary, indent=1))
    return path
