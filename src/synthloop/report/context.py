"""What the project report, `synthloop status`'s cost and impact, and the label-quality check read: the store, the
settings, the project folder and its models. `Project.report_context()` builds one; the reports see nothing
else of the project (no LLM client, no budget, no rounds to run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from synthloop.config import STATE_DIR, Config
from synthloop.store import Store
from synthloop.task import TaskSpec

if TYPE_CHECKING:
    from synthloop.learn.models import TextClassifier


@dataclass(frozen=True)
class ReportContext:
    root: Path  # the project folder: the report names it, and keeps its files under root/.synthloop
    store: Store
    config: Config
    load_model: Callable[[int | None], tuple[int, TextClassifier]]  # a stored model (None: the latest)
    new_model: Callable[[], TextClassifier]  # unfitted, as [model] makes it: label quality's k-fold refits

    @property
    def task(self) -> TaskSpec:
        return self.config.task

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR
