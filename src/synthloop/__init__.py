"""synthloop: compact text classifiers trained on synthetic data and improved by active learning."""

from synthloop.errors import SynthloopError
from synthloop.project import Project
from synthloop.simulate import simulate
from synthloop.task import Label, TaskSpec, load_task

__all__ = ["Project", "TaskSpec", "Label", "load_task", "simulate", "SynthloopError"]
__version__ = "0.1.0"
