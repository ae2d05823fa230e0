"""The unattended nightly job: new pool files -> collect labels -> (re)train -> evaluate -> top up ->
score what changed -> select -> route, under a lock, within label and $ budgets, with a run record."""

from __future__ import annotations

import fcntl
import glob
import importlib
import itertools
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from synthloop.errors import SynthloopError
from synthloop.project import checkpoint

# The sysexits.h codes a scheduler can act on: 69 (EX_UNAVAILABLE) "a server did not answer, retry later",
# 75 (EX_TEMPFAIL) "another run is at work, nothing was done".
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_LOCKED = 0, 1, 2, 69, 75
POOL_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".pq")
ENGINES = ("local", "ray")
LLM_LABELERS = ("llm", "hybrid", "llm-batch")
# A query status only a running nightly job sets: a leftover held back to keep tonight within --max-labels.
# It is pending again when the run ends, and at the start of the next run if this one was killed.
HELD = "held"


class Locked(SynthloopError):
    """Another run holds the project's lock."""


class Unavailable(SynthloopError):
    """A server the run needs did not answer: nothing is lost, and a later run does the work."""


def _transient_types() -> tuple[type, ...]:
    """Errors that mean "a server did not answer": the network's, and each client's own word for it."""
    found: list[type] = [ConnectionError, TimeoutError, Unavailable]
    for module, name in (("httpx", "TransportError"), ("openai", "APIConnectionError"),  # APITimeoutError too
                         ("synthloop.labelers.argilla", "ArgillaUnreachable"), ("synthloop.scale", "RayUnreachable")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def exit_status(error: BaseException) -> int:
    """The exit status for an error that ended a run: 69 when a server did not answer (the error, or one it
    was raised from or while handling, is a connection error or a timeout), else 2 for bad input (a
    SynthloopError, whose message names the fix), else 1."""
    transient, seen = _transient_types(), set()
    err: BaseException | None = error
    while err is not None and id(err) not in seen:
        if isinstance(err, Locked):
            return EXIT_LOCKED
        if isinstance(err, transient):
            return EXIT_UNAVAILABLE
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return EXIT_USAGE if isinstance(error, SynthloopError) else EXIT_FAILED


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
        folder = Path(*itertools.takewhile(lambda part: not glob.has_magic(part), path.parts))
        if not found and not (glob.has_magic(pattern) and folder.is_dir()):
            # A typo would otherwise read as "no new files" every night.
            raise SynthloopError(f"--pool {pattern}: no such file or folder; pass the folder the pool files arrive "
                                 "in, or a glob such as 'incoming/*.parquet'")
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


def check_options(project, labeler: str, engine: str | None, address: str | None, max_labels: int | None = None,
                  max_cost: float | None = None) -> None:
    """Refuse bad options before anything is done, each with the fix: a scheduler gets exit status 2 at once,
    not a failure after an hour of importing and training."""
    from synthloop.labelers import LABELERS

    if labeler not in LABELERS:
        raise SynthloopError(f"unknown labeler {labeler!r}; choose --labeler one of {', '.join(LABELERS)}")
    for option, value in (("--max-labels", max_labels), ("--max-cost", max_cost)):
        if value is not None and value < 0:
            raise SynthloopError(f"{option} is {value}; give 0 or more (or leave it out for no cap)")
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


def _needs_llm(project, labeler: str) -> bool:
    # Tonight's labeler, or leftovers that the LLM answers when it collects, whoever labels tonight.
    return labeler in LLM_LABELERS or any(project.store.queries(status="pending", routed_to=name, submitted=True)
                                          for name in ("llm", "hybrid"))


def check_llm_reachable(project, timeout: float = 10.0) -> None:
    """Fail the run at once when nothing listens at the LLM API's address: the LLM labeler would otherwise
    mark every query of the night failed, one connection error at a time."""
    cfg = project.config.llm
    url = cfg.base_url or os.environ.get(cfg.base_url_env) or "https://api.openai.com/v1"  # the SDK's default
    parts = urlsplit(url)
    if not parts.hostname:
        return  # not a URL this check understands: the client reports it
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=min(timeout, cfg.timeout)).close()
    except OSError as err:
        raise Unavailable(f"the LLM API at {url} does not answer ({err.strerror or err}); check that the server is "
                          f"up and that [llm] base_url or ${cfg.base_url_env} names it. Nothing was labeled; the "
                          "next run does tonight's work") from None


# Tonight's budgets ---------------------------------------------------------------------------------------

def night_started_at(store, now: float | None = None) -> float:
    """When tonight began: the start of the first run after the last one that finished. A run that was killed
    or failed, and every run after it until one finishes, are one night, so a re-run does not get the night's
    budget again. With no unfinished run before it, a run's night starts with it (`now`)."""
    start = None
    for run in store.runs("nightly"):
        if run["status"] == "done":
            start = None
        elif start is None:
            start = run["started_at"]
    return start if start is not None else (time.time() if now is None else now)


def night_spend(project, since: float) -> float:
    """$ the night has spent or committed since `since`: LLM calls (labeling, top-up generation) at their
    recorded cost, Batch API jobs at their estimate when submitted (their real cost, recorded when a later
    night collects them, was that night's commitment, not this one's)."""
    from synthloop.labelers.batch import PURPOSE, jobs

    spent = project.store.llm_cost_since(since, exclude_purposes=(PURPOSE,))
    submitted = jobs(project.store, states=("open", "answered", "done", "lost")).values()
    return spent + sum(job.get("estimated_cost", 0.0) for job in submitted if job.get("submitted_at", 0) >= since)


@dataclass
class Handout:
    """What tonight hands to labelers: the new selection, plus the leftovers of earlier nights that a labeler
    takes up again; with --max-labels, together at most that many."""

    select: int
    carried: list = field(default_factory=list)  # leftovers handed out again tonight, oldest first
    held: list = field(default_factory=list)  # leftovers beyond the cap: they wait for the next night


def _tonights_round(store) -> int:
    rounds = store.rounds()
    if not rounds:
        return 0
    return rounds[-1]["number"] + (rounds[-1]["status"] == "done")


def leftovers(project, labeler: str, round_: int) -> list:
    """Pending queries of rounds before `round_` that tonight's run hands to a labeler again: those the LLM,
    hybrid or oracle labeler answers when it collects, those the Batch labeler sends in tonight's job (with
    --labeler llm-batch), and those never pushed to Argilla (pushed with tonight's, by argilla or hybrid)."""
    from synthloop.labelers.batch import jobs

    in_job = {eid for job in jobs(project.store).values() for eid in job["ids"]}
    out = []
    for q in project.store.queries():
        if q.status not in ("pending", HELD) or q.round >= round_:
            continue
        if (q.routed_to in ("llm", "hybrid", "oracle") and q.submitted_at is not None
                or q.routed_to == "llm-batch" and labeler == "llm-batch" and q.example_id not in in_job
                or q.routed_to == "argilla" and labeler in ("argilla", "hybrid") and q.submitted_at is None):
            out.append(q)
    return out


def plan_handout(project, labeler: str, max_labels: int | None) -> Handout:
    """--max-labels N: N queries at most go out tonight, leftovers first, and the selection fills the rest.
    Without it: a selection of [loop] batch_size, and every leftover. A round a killed run left open already
    has its selection, which counts first."""
    store = project.store
    round_ = _tonights_round(store)
    carried = leftovers(project, labeler, round_)
    if max_labels is None:
        return Handout(project.config.loop.batch_size, carried)
    selected = len(store.queries(round_=round_))
    room = max(0, max_labels - selected)
    kept = carried[:room]
    return Handout(0 if selected else room - len(kept), kept, carried[room:])


def release_held(store) -> int:
    held = [q.example_id for q in store.queries(status=HELD)]
    store.set_query_status(held, "pending")
    return len(held)


@contextmanager
def holding(store, queries):
    """Leftovers beyond tonight's cap, out of every labeler's sight (they ask for pending queries) until the
    run ends. A run killed meanwhile leaves them held; the next run releases them before anything else."""
    store.set_query_status([q.example_id for q in queries], HELD)
    try:
        yield
    finally:
        release_held(store)


# The run ----------------------------------------------------------------------------------------------

def run_nightly(project, pool: str | None = None, dry_run: bool = False, max_labels: int | None = None,
                max_cost: float | None = None, labeler: str | None = None, text_col: str = "text",
                id_col: str | None = None, log_file: Path | None = None, engine: str | None = None,
                address: str | None = None) -> dict:
    """One nightly run; returns its summary. Safe to re-run after a crash: every step resumes from the store.

    max_labels caps what goes to labelers tonight (new selections plus leftovers handed out again) and sets
    the selection's size; max_cost caps the night's LLM spend, across re-runs of a night that did not finish.
    engine: None scores the pool in memory, with scores cached per model version (only what changed is
    scored); "local" or "ray" streams the whole unlabeled pool from the store through synthloop.scale
    (every core, or the Ray cluster at `address`), for pools too big for that."""
    log = _logger(log_file if log_file is not None else project.state_dir / "logs" / "nightly.log")
    labeler = labeler or project.config.loop.labeler
    check_options(project, labeler, engine, address, max_labels, max_cost)
    if pool:
        pool_files(pool)  # a --pool that names nothing is refused now, with the fix
    with project_lock(project.state_dir), project.store.exclusive("nightly"):  # the store's: other machines too
        if dry_run:
            plan = _plan(project, pool, labeler, max_labels, max_cost, engine, address)
            log.info("dry run: %s", json.dumps(plan))
            return {"dry_run": True, **plan}
        project.store.mark_killed_runs("nightly")  # we hold the lock: any run still "running" died
        release_held(project.store)  # a killed run's, before anything counts what is pending
        run_id = project.store.start_run("nightly")
        log.info("run %s started", run_id)
        try:
            summary = _run(project, run_id, pool, labeler, max_labels, max_cost, text_col, id_col, engine, address, log)
            write_report(project, summary)  # before "done": a night whose report is missing did not finish
            checkpoint("reported", summary["round"])
        except Exception as err:
            status = exit_status(err)
            project.store.finish_run(run_id, "failed", {"error": str(err), "exit_status": status})
            log.exception("run %s failed (exit status %d)", run_id, status)
            raise
        project.store.finish_run(run_id, "done", summary)
        log.info("run %s done: %s", run_id, json.dumps(summary))
        return summary


def _plan(project, pool, labeler, max_labels, max_cost, engine, address) -> dict:
    files = new_files(project, pool) if pool else []
    handout = plan_handout(project, labeler, max_labels)
    left = None if max_cost is None else max(0.0, max_cost - night_spend(project, night_started_at(project.store)))
    return {"new_files": [str(f) for f in files], "pending_queries": project.store.query_counts().get("pending", 0),
            "retrain": project.training_changed(), "select": handout.select,
            "carried_over": len(handout.carried), "held_back": len(handout.held), "labeler": labeler,
            "max_cost": max_cost, "budget_left": left, "engine": engine, "address": address}


def _import_new(project, pool, text_col, id_col, log) -> tuple[int, int]:
    files = new_files(project, pool) if pool else []
    imported = 0
    for path in files:
        result = project.import_file(path, text_col=text_col, id_col=id_col, split="pool")
        checkpoint("imported", 0)  # a kill here: the re-run imports the file again and adds nothing twice
        stat = path.stat()
        project.store.record_pool_file(str(path), stat.st_size, stat.st_mtime, result.rows, result.added)
        imported += result.added
        log.info("imported %s: %d new examples", path, result.added)
    return len(files), imported


def _run(project, run_id, pool, labeler, max_labels, max_cost, text_col, id_col, engine, address, log) -> dict:
    from synthloop.labelers import get_labeler
    from synthloop.labelers.batch import jobs as batch_jobs

    start = time.perf_counter()
    if _needs_llm(project, labeler):
        check_llm_reachable(project)
    n_files, imported = _import_new(project, pool, text_col, id_col, log)
    night = night_started_at(project.store)
    spent_before = night_spend(project, night)
    project.llm_budget = None if max_cost is None else max(0.0, max_cost - spent_before)
    project.last_scored = 0
    run_cost_from = time.time()
    handout = plan_handout(project, labeler, max_labels)
    log.info("tonight: select %d, %d leftovers handed out again, %d held back (--max-labels %s); $ left %s",
             handout.select, len(handout.carried), len(handout.held), max_labels, project.llm_budget)
    retrain = project.training_changed()
    latest = project.store.latest_model()
    jobs_before = set(batch_jobs(project.store, states=("open", "answered", "done")))
    with holding(project.store, handout.held):
        result = project.round(n=handout.select, labeler=labeler, incremental=True, retrain=retrain, engine=engine,
                               address=address)
        if labeler == "llm-batch" and handout.carried:
            # With no new selection the round hands nothing to the Batch labeler: the leftovers go out here.
            get_labeler(labeler, project).submit([])
    new_jobs = [job for key, job in batch_jobs(project.store, states=("open", "answered", "done")).items()
                if key not in jobs_before]
    night_cost = night_spend(project, night)
    return {
        "run": run_id, "status": "done", "new_files": n_files, "imported": imported,
        "labels_collected": result.labels_collected,
        # Labels that arrived during the round (a Batch API job, a reviewer) retrain too.
        "retrained": latest is None or result.model_version != latest["version"],
        "model_version": result.model_version, "round": result.number, "queried": result.queried,
        "carried_over": len(handout.carried), "held_back": len(handout.held),
        "scored": getattr(project, "last_scored", None), "engine": engine or "memory",
        "labeler": labeler, "llm_cost": round(project.store.llm_cost_since(run_cost_from), 6),
        "night_cost": round(night_cost, 6),
        "budget_left": None if max_cost is None else round(max(0.0, max_cost - night_cost), 6),
        "pending": project.store.query_counts().get("pending", 0),
        # Submitted tonight, paid when the job ends: counted against tonight's budget at this estimate.
        "batch": {"submitted": sum(len(j["ids"]) for j in new_jobs),
                  "estimated_cost": round(sum(j["estimated_cost"] for j in new_jobs), 6),
                  "open_jobs": len(batch_jobs(project.store, states=("open",)))},
        "metrics": {k: (result.metrics or {}).get(k) for k in ("n_labels", "accuracy", "macro_f1")},
        "seconds": round(time.perf_counter() - start, 2),
    }


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
