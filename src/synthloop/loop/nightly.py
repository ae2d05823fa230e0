"""The unattended nightly job: new pool files -> collect labels -> (re)train -> evaluate -> top up ->
score what changed -> select -> route, under a lock, within label and $ budgets, with a run record.

The run drives the project's round through the `Project` façade (import, round, hand out); the checks and the
night's plan get only the store and settings they read."""

from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from synthloop.checkpoint import checkpoint
from synthloop.config import Config
from synthloop.errors import (  # noqa: F401
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Locked,
    SynthloopError,
    Unavailable,
    exit_code,
    failure,
)
from synthloop.learn import ray_local
from synthloop.loop.budget import Budget
from synthloop.loop.lock import project_lock
from synthloop.report.nightly_report import outage, rounded, run_logging, write_report
from synthloop.store import Query, QueryStatus, Store

if TYPE_CHECKING:
    from synthloop.loop.project import Project

POOL_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".pq")
ENGINES = ("local", "ray")
LLM_LABELERS = ("llm", "hybrid", "llm-batch")
# A query status only a running nightly job sets: a leftover held back to keep tonight within --max-labels.
# It is pending again when the run ends, and at the start of the next run if this one was killed.
HELD = QueryStatus.HELD
exit_status = exit_code  # the one mapping, in synthloop.errors


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


def new_files(store: Store, pattern: str) -> list[Path]:
    """Files not seen before, or changed since (size or modification time)."""
    fresh = []
    for path in pool_files(pattern):
        stat = path.stat()
        seen = store.pool_file(str(path))
        if seen is None or seen.size != stat.st_size or seen.mtime != stat.st_mtime:
            fresh.append(path)
    return fresh


def _logger() -> logging.Logger:
    """The run's logger; its records reach the log file and stderr through nightly_report.run_logging."""
    log = logging.getLogger("synthloop.loop.nightly")
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = True
    return log


def check_options(config: Config, labeler: str, engine: str | None, address: str | None, max_labels: int | None = None,
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
    from synthloop.learn import scale

    strategy = config.loop.strategy
    if strategy not in scale.STRATEGIES:
        raise SynthloopError(f"strategy {strategy!r} cannot be streamed by --engine; set [loop] strategy in "
                             f"synthloop.toml to one of {', '.join(scale.STRATEGIES)}, or leave --engine out")
    if engine == "ray":
        from synthloop.learn import scale_ray

        scale_ray.import_ray()  # a missing Ray is named now, with the extra to install
        if address:
            scale_ray.check_ray_address(address)


def _needs_llm(store: Store, labeler: str) -> bool:
    # Tonight's labeler, or leftovers that the LLM answers when it collects, whoever labels tonight.
    return labeler in LLM_LABELERS or any(store.queries(status="pending", routed_to=name, submitted=True)
                                          for name in ("llm", "hybrid"))


def check_llm_reachable(config: Config, timeout: float = 10.0) -> None:
    """Fail the run at once when nothing listens at the LLM API's address: the LLM labeler would otherwise
    mark every query of the night failed, one connection error at a time."""
    cfg = config.llm
    url = cfg.base_url or os.environ.get(cfg.base_url_env) or "https://api.openai.com/v1"  # the SDK's default
    parts = urlsplit(url)
    if not parts.hostname:
        return  # not a URL this check understands: the client reports it
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=min(timeout, cfg.timeout or timeout)).close()
    except OSError as err:
        raise Unavailable(f"the LLM API at {url} does not answer ({err.strerror or err}); check that the server is "
                          f"up and that [llm] base_url or ${cfg.base_url_env} names it. Nothing was labeled; the "
                          "next run does tonight's work") from None


# Tonight's budgets ---------------------------------------------------------------------------------------

def night_started_at(store: Store, now: float | None = None) -> float:
    """When tonight began: the start of the first run after the last one that finished. A run that was killed
    or failed, and every run after it until one finishes, are one night, so a re-run does not get the night's
    budget again. With no unfinished run before it, a run's night starts with it (`now`)."""
    start = None
    for run in store.runs("nightly"):
        if run.status == "done":
            start = None
        elif start is None:
            start = run.started_at
    return start if start is not None else (time.time() if now is None else now)


def night_spend(store: Store, since: float) -> float:
    """$ the night has spent or committed since `since`: LLM calls (labeling, top-up generation) at their
    recorded cost, Batch API jobs at their estimate when submitted (their real cost, recorded when a later
    night collects them, was that night's commitment, not this one's)."""
    from synthloop.labelers.batch import PURPOSE, jobs

    spent = store.llm_cost_since(since, exclude_purposes=(PURPOSE,))
    submitted = jobs(store, states=("open", "answered", "done", "lost")).values()
    return spent + sum(job.estimated_cost for job in submitted if job.created_at >= since)


@dataclass
class Handout:
    """What tonight hands to labelers: the new selection, plus the leftovers of earlier nights that a labeler
    takes up again; with --max-labels, together at most that many."""

    select: int
    carried: list[Query] = field(default_factory=list)  # leftovers handed out again tonight, oldest first
    held: list[Query] = field(default_factory=list)  # leftovers beyond the cap: they wait for the next night


def _tonights_round(store: Store) -> int:
    rounds = store.rounds()
    if not rounds:
        return 0
    return rounds[-1].number + (rounds[-1].status == "done")


def leftovers(store: Store, labeler: str, round_: int) -> list[Query]:
    """Pending queries of rounds before `round_` that tonight's run hands to a labeler again: those the LLM,
    hybrid or oracle labeler answers when it collects, those the Batch labeler sends in tonight's job (with
    --labeler llm-batch), and those never pushed to Argilla (pushed with tonight's, by argilla or hybrid)."""
    from synthloop.labelers.batch import jobs

    in_job = {eid for job in jobs(store).values() for eid in job.example_ids}
    out = []
    for q in store.queries():
        if q.status not in (QueryStatus.PENDING, HELD) or q.round >= round_:
            continue
        if (q.routed_to in ("llm", "hybrid", "oracle") and q.submitted_at is not None
                or q.routed_to == "llm-batch" and labeler == "llm-batch" and q.example_id not in in_job
                or q.routed_to == "argilla" and labeler in ("argilla", "hybrid") and q.submitted_at is None):
            out.append(q)
    return out


def plan_handout(store: Store, config: Config, labeler: str, max_labels: int | None) -> Handout:
    """--max-labels N: N queries at most go out tonight, leftovers first, and the selection fills the rest.
    Without it: a selection of [loop] batch_size, and every leftover. A round a killed run left open already
    has its selection, which counts first."""
    round_ = _tonights_round(store)
    carried = leftovers(store, labeler, round_)
    if max_labels is None:
        return Handout(config.loop.batch_size, carried)
    selected = len(store.queries(round_=round_))
    room = max(0, max_labels - selected)
    kept = carried[:room]
    return Handout(0 if selected else room - len(kept), kept, carried[room:])


def release_held(store: Store) -> int:
    return len(store.release_held())


@contextmanager
def holding(store: Store, queries: list[Query]):
    """Leftovers beyond tonight's cap, out of every labeler's sight (they ask for pending queries) until the
    run ends. A run killed meanwhile leaves them held; the next run releases them before anything else."""
    store.hold([q.example_id for q in queries])
    try:
        yield
    finally:
        release_held(store)


# The run ----------------------------------------------------------------------------------------------

def run_nightly(project: Project, pool: str | None = None, dry_run: bool = False, max_labels: int | None = None,
                max_cost: float | None = None, labeler: str | None = None, text_col: str = "text",
                id_col: str | None = None, log_file: Path | None = None, engine: str | None = None,
                address: str | None = None) -> dict:
    """One nightly run; returns its summary. Safe to re-run after a crash: every step resumes from the store.

    max_labels caps what goes to labelers tonight (new selections plus leftovers handed out again) and sets
    the selection's size; max_cost caps the night's LLM spend, across re-runs of a night that did not finish.
    engine: None scores the pool in memory, with scores cached per model version (only what changed is
    scored); "local" or "ray" streams the whole unlabeled pool from the store through synthloop.learn.scale
    (every core, or the Ray cluster at `address`), for pools too big for that."""
    labeler = labeler or project.config.loop.labeler
    check_options(project.config, labeler, engine, address, max_labels, max_cost)
    if pool:
        pool_files(pool)  # a --pool that names nothing is refused now, with the fix
    log_file = log_file if log_file is not None else project.state_dir / "logs" / "nightly.log"
    with project_lock(project.state_dir, "nightly"), project.store.exclusive("nightly"), run_logging(log_file) as warned:
        log = _logger()
        if dry_run:
            plan = _plan(project, pool, labeler, max_labels, max_cost, engine, address)
            log.info("dry run: %s", json.dumps(plan))
            return {"dry_run": True, **plan}
        project.store.mark_killed_runs("nightly")  # we hold the lock: any run still "running" died
        ray_local.reap(project.state_dir)  # and a local Ray a killed run started dies with it
        release_held(project.store)  # a killed run's, before anything counts what is pending
        run_id = project.store.start_run("nightly")
        log.info("run %s started", run_id)
        try:
            summary = _run(project, run_id, pool, labeler, max_labels, max_cost, text_col, id_col, engine, address, log)
            summary["outage"] = outage(project.store, project.unreachable)  # None, or the servers down and what waits
            summary["warnings"] = list(warned)  # each once, as in the log
            write_report(project.state_dir, summary)  # before "done": a night whose report is missing did not finish
            checkpoint("reported", summary["round"])
        except Exception as err:
            error, status = failure(err)  # a full disk is 74 here too, as the CLI reports it
            project.store.finish_run(run_id, "failed", {"error": str(error), "exit_status": status})
            log.exception("run %s failed (exit status %d)", run_id, status)
            raise
        project.store.finish_run(run_id, "done", summary)
        log.info("run %s done: %s", run_id, json.dumps(summary))
        return summary


def _plan(project: Project, pool, labeler, max_labels, max_cost, engine, address) -> dict:
    store = project.store
    files = new_files(store, pool) if pool else []
    handout = plan_handout(store, project.config, labeler, max_labels)
    left = None if max_cost is None else max(0.0, max_cost - night_spend(store, night_started_at(store)))
    return {"new_files": [str(f) for f in files], "pending_queries": store.query_counts().get("pending", 0),
            "retrain": project.training_changed(), "select": handout.select,
            "carried_over": len(handout.carried), "held_back": len(handout.held), "labeler": labeler,
            "max_cost": max_cost, "budget_left": left, "engine": engine, "address": address}


def _import_new(project: Project, pool, text_col, id_col, log) -> tuple[int, int]:
    files = new_files(project.store, pool) if pool else []
    imported = 0
    for path in files:
        result = project.import_file(path, text_col=text_col, id_col=id_col, split="pool")
        checkpoint("imported", 0)  # a kill here: the re-run imports the file again and adds nothing twice
        stat = path.stat()
        project.store.record_pool_file(str(path), stat.st_size, stat.st_mtime, result.rows, result.added)
        imported += result.added
        log.info("imported %s: %d new examples", path, result.added)
    return len(files), imported


def _run(project: Project, run_id, pool, labeler, max_labels, max_cost, text_col, id_col, engine, address, log) -> dict:
    start = time.perf_counter()  # before the import below: it loads the openai SDK, a second or two of the run
    from synthloop.labelers.batch import jobs as batch_jobs

    store = project.store
    if _needs_llm(store, labeler):
        check_llm_reachable(project.config)
    n_files, imported = _import_new(project, pool, text_col, id_col, log)
    night = night_started_at(store)
    spent_before = night_spend(store, night)
    project.budget = Budget(None if max_cost is None else max_cost - spent_before)
    project.last_scored = 0
    run_cost_from = time.time()
    handout = plan_handout(store, project.config, labeler, max_labels)
    log.info("tonight: select %d, %d leftovers handed out again, %d held back (--max-labels %s); $ left %s",
             handout.select, len(handout.carried), len(handout.held), max_labels, project.budget.left)
    retrain = project.training_changed()
    latest = store.latest_model()
    jobs_before = set(batch_jobs(store, states=("open", "answered", "done")))
    with holding(store, handout.held):
        result = project.round(n=handout.select, labeler=labeler, incremental=True, retrain=retrain, engine=engine,
                               address=address)
        if labeler == "llm-batch" and handout.carried:
            # With no new selection the round hands nothing to the Batch labeler: the leftovers go out here.
            project.hand_out(labeler, [])
    new_jobs = [job for key, job in batch_jobs(store, states=("open", "answered", "done")).items()
                if key not in jobs_before]
    night_cost = night_spend(store, night)
    return {
        "run": run_id, "status": "done", "new_files": n_files, "imported": imported,
        "labels_collected": result.labels_collected,
        # Real labels stored when the run ended: those beyond the model's n_labels train the next run's model.
        "labels_total": project.n_real_labels(),
        # Labels that arrived during the round (a Batch API job, a reviewer) retrain too.
        "retrained": latest is None or result.model_version != latest.version,
        "model_version": result.model_version, "round": result.number, "queried": result.queried,
        "carried_over": len(handout.carried), "held_back": len(handout.held),
        "scored": project.last_scored, "engine": engine or "memory",
        "labeler": labeler, "llm_cost": round(store.llm_cost_since(run_cost_from), 6),
        "night_cost": round(night_cost, 6),
        "budget_left": None if max_cost is None else round(max(0.0, max_cost - night_cost), 6),
        "pending": store.query_counts().get("pending", 0),
        # Submitted tonight, paid when the job ends: counted against tonight's budget at this estimate.
        "batch": {"submitted": sum(len(j.example_ids) for j in new_jobs),
                  "estimated_cost": round(sum(j.estimated_cost for j in new_jobs), 6),
                  "open_jobs": len(batch_jobs(store, states=("open",)))},
        "metrics": rounded({k: (result.metrics or {}).get(k) for k in ("n_labels", "accuracy", "macro_f1")}),
        "seconds": round(time.perf_counter() - start, 2),
    }
