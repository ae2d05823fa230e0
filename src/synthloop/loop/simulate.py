"""A whole active-learning run against gold labels, in a throwaway project: the label-efficiency check."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from synthloop.task import TaskSpec, load_task

if TYPE_CHECKING:
    from synthloop.loop.project import Project

BASELINE = "random"


def simulate(task: TaskSpec | str | Path, pool: str | Path, test: str | Path, strategy: str = "cold-start",
             model: str = "hybrid-lr", budget: int = 500, batch: int = 25, seed: int = 0,
             text_col: str = "text", label_col: str = "label",
             on_point: Callable[[dict], None] | None = None, report_dir: str | Path | None = None,
             measure_latency: bool = True) -> dict:
    """Returns {"curve": [{"labels", "accuracy", "macro_f1"}, ...], "seconds"}: one point per round.

    With report_dir, also runs the random baseline (same seed, budget and batch) and writes the report
    (HTML, Markdown, JSON) with both learning curves there; the result then has "baselines" and "report"
    too. on_point gets the baseline's points with "baseline": "random" added."""
    start = time.perf_counter()
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    with tempfile.TemporaryDirectory(prefix="synthloop-sim-") as tmp:
        from synthloop.loop.project import Project  # here: `import synthloop` stays light
        from synthloop.store.url import LOCAL_STORE

        # A throwaway store of its own: a $SYNTHLOOP_DB_URL shared with real projects must not see simulated rounds.
        project = Project.init(Path(tmp) / "project", spec, model={"name": model}, store={"url": LOCAL_STORE},
                               loop={"strategy": strategy, "batch_size": batch, "seed": seed, "labeler": "oracle"})
        try:
            project.import_file(pool, text_col, label_col, split="pool", gold=True)
            project.import_file(test, text_col, label_col, split="test")
            curve = _run(project, budget, batch, on_point)
            if report_dir is None:
                return {"curve": curve, "seconds": round(time.perf_counter() - start, 3)}
            if strategy == BASELINE:
                baseline = curve  # the same seed draws the same batches: a second run would repeat this one
            else:
                relay = (lambda p: on_point({**p, "baseline": BASELINE})) if on_point else None
                baseline = simulate(spec, pool, test, BASELINE, model, budget, batch, seed, text_col, label_col, relay)["curve"]
            # The project is still open here: the report reads its rounds, labels and latest model before
            # the temporary folder goes away.
            from synthloop.report.project_report import build_report

            label = (f"simulation of {strategy} vs {BASELINE} sampling ({model}, {budget} labels in batches of {batch}, "
                     f"seed {seed}; its temporary project is gone)")
            data = build_report(project.report_context(), out_dir=report_dir, baselines={BASELINE: baseline},
                                measure_latency=measure_latency, project_label=label)
        finally:
            project.close()
    return {"curve": curve, "seconds": round(time.perf_counter() - start, 3), "baselines": {BASELINE: baseline},
            "report": data["paths"]}


def _run(project: Project, budget: int, batch: int, on_point) -> list[dict]:
    curve = []
    while True:
        labels = project.n_real_labels()
        remaining = budget - labels
        result = project.round(query=remaining > 0, n=min(batch, max(remaining, 0)))
        metrics = result.metrics or {}
        point = {"labels": result.n_labels, "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1")}
        curve.append(point)
        if on_point:
            on_point(point)
        if remaining <= 0 or result.queried == 0:
            return curve
