"""A whole active-learning run against gold labels, in a throwaway project: the label-efficiency check."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from synthloop.project import Project
from synthloop.task import TaskSpec, load_task


def simulate(task: TaskSpec | str | Path, pool: str | Path, test: str | Path, strategy: str = "margin",
             model: str = "tfidf-lr", budget: int = 500, batch: int = 25, seed: int = 0,
             text_col: str = "text", label_col: str = "label",
             on_point: Callable[[dict], None] | None = None) -> dict:
    """Returns {"curve": [{"labels", "accuracy", "macro_f1"}, ...], "seconds"}: one point per round."""
    start = time.perf_counter()
    spec = task if isinstance(task, TaskSpec) else load_task(task)
    with tempfile.TemporaryDirectory(prefix="synthloop-sim-") as tmp:
        project = Project.init(Path(tmp) / "project", spec, model={"name": model},
                               loop={"strategy": strategy, "batch_size": batch, "seed": seed, "labeler": "oracle"})
        try:
            project.import_file(pool, text_col, label_col, split="pool", gold=True)
            project.import_file(test, text_col, label_col, split="test")
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
                    break
        finally:
            project.close()
    return {"curve": curve, "seconds": round(time.perf_counter() - start, 3)}
