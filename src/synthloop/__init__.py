"""synthloop: compact text classifiers trained on synthetic data and improved by active learning."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from synthloop.errors import SynthloopError
from synthloop.loop.simulate import simulate
from synthloop.task import Label, TaskSpec, load_task

if TYPE_CHECKING:
    from synthloop.loop.project import Project

__all__ = ["Project", "TaskSpec", "Label", "load_task", "simulate", "SynthloopError"]
__version__ = "0.1.0"

# Imported on first use, so that `synthloop --help` and `import synthloop.cli.main` do not load scikit-learn.
_LAZY = {"Project": "synthloop.loop.project"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'synthloop' has no attribute {name!r}")
