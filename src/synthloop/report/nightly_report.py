"""What an operator sees of a nightly run: its warnings (each once, in the log and on stderr), an explicit
outage field, and the report (.md, .html, .json) with figures rounded; plus the recent runs, for `synthloop
status` and `synthloop report`.

Logging during a run goes through synthloop's own handlers on the `synthloop` logger, which does not
propagate: the Argilla SDK installs a root stderr handler at import that would echo every record again
(`INFO:synthloop.loop.nightly:...`), which breaks `--json` output collected with `2>&1`.
"""

from __future__ import annotations

import html
import json
import logging
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from synthloop.store import Store

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Brief(logging.Formatter):
    """stderr gets the message; the traceback of a failed run is in the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


class _Once(logging.Filter):
    """Drops a warning already seen in this run: a round meets an outage at each of its steps."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []
        self._first: dict[str, logging.LogRecord] = {}  # each handler passes the first record of a message

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if message not in self._first:
            self._first[message] = record
            self.seen.append(message)
        return self._first[message] is record


@contextmanager
def run_logging(log_file: Path | None, stderr=None):
    """For one run: every synthloop record at INFO and above to `log_file`, warnings and errors to stderr,
    each warning once; yields the list of warnings seen (in order). The previous set-up is restored after."""
    root = logging.getLogger("synthloop")
    saved = (root.level, root.propagate, list(root.handlers))
    once = _Once()
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
        handlers[-1].setLevel(logging.INFO)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
    handlers.append(logging.StreamHandler(stderr or sys.stderr))
    handlers[-1].setLevel(logging.WARNING)
    handlers[-1].setFormatter(_Brief())
    for handler in handlers:
        handler.addFilter(once)
    root.handlers[:] = handlers
    root.setLevel(logging.INFO)
    root.propagate = False
    try:
        yield once.seen
    finally:
        for handler in handlers:
            handler.close()
        root.setLevel(saved[0])
        root.propagate = saved[1]
        root.handlers[:] = saved[2]


def outage(store: Store, unreachable: Mapping[str, float]) -> dict | None:
    """Servers that still failed every retry when the run ended (`unreachable`: server URL -> when it last failed
    every retry, LabelContext's), with what waits on them: queries for reviewers not pushed, and pushed ones whose
    labels may be waiting on the server. None: no outage."""
    down = sorted(unreachable)
    if not down:
        return None
    return {"unreachable": down,
            "not_pushed": len(store.queries(status="pending", routed_to="argilla", submitted=False)),
            "labels_waiting": len(store.queries(status="pending", routed_to="argilla", submitted=True))}


def outage_line(out: dict) -> str:
    """An outage as a person reads it (the nightly report, `synthloop round`)."""
    return (f"{', '.join(out['unreachable'])} did not answer: {_plural(out['not_pushed'], 'query', 'queries')} not "
            f"pushed, {out['labels_waiting']} pushed ones whose labels wait on the server")


def rounded(value, digits: int = 4):
    """Figures as a person reads them: 0.8682, not 0.8681541582150102."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def model_line(summary: dict) -> str:
    """The model the night evaluated and the labels it was trained on. Labels collected while routing (an
    oracle's, an LLM's) arrive after the model was trained, so "labels collected: 18" beside a model trained
    on 0 is no contradiction once the line says when they came."""
    version, trained_on = summary["model_version"], (summary.get("metrics") or {}).get("n_labels")
    total = summary.get("labels_total")
    # Reports from before labels_total: tonight's labels all count as after training.
    after = summary["labels_collected"] if total is None or trained_on is None else max(0, total - trained_on)
    later = f"tonight's {_plural(after, 'label')} arrived after it was trained; the next run trains on them"
    if summary["retrained"]:
        on = "" if trained_on is None else f" on {_plural(trained_on, 'real label')}"
        return f"v{version}, retrained{on}" + (f" ({later})" if after else "")
    return f"v{version}, unchanged ({later if after else 'no new labels'})"


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def report_lines(summary: dict) -> list[tuple[str, str]]:
    """(what, value) rows shared by the Markdown and the HTML report."""
    m, batch, out = summary["metrics"], summary["batch"], summary.get("outage")
    accuracy = "-" if m.get("accuracy") is None else f"{m['accuracy']:.3f}"
    macro = "-" if m.get("macro_f1") is None else f"{m['macro_f1']:.3f}"
    rows = [("status", summary["status"] + (" (with an outage)" if out else "")),
            ("round", str(summary["round"])),
            ("new pool files", f"{summary['new_files']} ({_plural(summary['imported'], 'new example')})"),
            ("labels collected", str(summary["labels_collected"])),
            ("model", model_line(summary)),
            ("scored", f"{_plural(summary['scored'] or 0, 'example')} ({summary['engine']})"),
            ("queried", f"{summary['queried']} → {summary['labeler']}" + _leftovers(summary)
                        + (f" ({out['not_pushed']} not pushed)" if out and out["not_pushed"] else "")),
            ("pending queries", str(summary["pending"])),
            ("LLM cost", f"${summary['llm_cost']:.4f} (tonight ${summary['night_cost']:.4f})")]
    if batch["submitted"] or batch["open_jobs"]:
        rows.append(("Batch API", (f"{_plural(batch['submitted'], 'query', 'queries')} submitted (estimated "
                                   f"${batch['estimated_cost']:.4f}); {_plural(batch['open_jobs'], 'job')} running")))
    rows.append(("test accuracy", f"{accuracy} (macro-F1 {macro})"))  # the model row says what it was trained on
    if out:
        rows.append(("outage", outage_line(out)))
    for warning in summary.get("warnings") or []:
        rows.append(("warning", warning))
    rows.append(("seconds", f"{summary['seconds']:.1f}"))
    return rows


def _leftovers(summary: dict) -> str:
    carried, held = summary.get("carried_over") or 0, summary.get("held_back") or 0
    if not (carried or held):
        return ""
    return f"; {_plural(carried, 'leftover')} handed out again, {held} held back"


def write_report(state_dir: Path, summary: dict) -> Path:
    """`.synthloop/reports/nightly-NNNN.md`, `.html` and `.json` under the project's state_dir; returns the Markdown's path."""
    reports = state_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    rows = report_lines(summary)
    stem = reports / f"nightly-{summary['run']:04d}"
    md = [f"# Nightly run {summary['run']}", ""] + [f"- {what}: {_md(value)}" for what, value in rows] + [""]
    stem.with_suffix(".md").write_text("\n".join(md))
    cells = "\n".join(f"<tr><th>{html.escape(what)}</th><td>{html.escape(value)}</td></tr>" for what, value in rows)
    stem.with_suffix(".html").write_text(
        f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Nightly run {summary['run']}</title>\n"
        "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em;vertical-align:top}"
        "td,th{padding:.2em .5em;border-bottom:1px solid #ddd}</style></head>\n"
        f"<body><h1>Nightly run {summary['run']}</h1>\n<table>\n{cells}\n</table></body></html>\n")
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return stem.with_suffix(".md")


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("<", "&lt;")


def recent_runs(store: Store, n: int = 10) -> list[dict]:
    """The last n nightly runs, newest last, as rows for `status` and `report`."""
    rows = []
    for run in store.runs("nightly")[-n:]:
        s = run.summary or {}
        rows.append({"run": run.id, "status": run.status, "started_at": run.started_at,
                     # A finished run's own figure (its summary's), so the report and the run's summary agree.
                     "seconds": s.get("seconds") if s.get("seconds") is not None else (
                         None if not run.finished_at else round(run.finished_at - run.started_at, 1)),
                     "round": s.get("round"), "queried": s.get("queried"), "labels_collected": s.get("labels_collected"),
                     "outage": bool(s.get("outage")), "error": s.get("error"), "exit_status": s.get("exit_status")})
    return rows
