"""Sources of labels behind one interface."""

from __future__ import annotations

from synthloop.errors import SynthloopError
from synthloop.labelers.base import Labeler
from synthloop.labelers.oracle import OracleLabeler

LABELERS = ("oracle", "llm", "argilla", "hybrid", "llm-batch")


def get_labeler(name: str, project) -> Labeler:
    if name == "oracle":
        return OracleLabeler(project.store)
    if name == "llm":
        from synthloop.labelers.llm import LLMLabeler

        return LLMLabeler(project)
    if name == "llm-batch":
        from synthloop.labelers.batch import BatchLabeler

        return BatchLabeler(project)
    if name == "argilla":
        from synthloop.labelers.argilla import ArgillaLabeler

        return ArgillaLabeler(project)
    if name == "hybrid":
        from synthloop.labelers.router import HybridLabeler

        return HybridLabeler(project)
    raise SynthloopError(f"unknown labeler {name!r}; choose one of {', '.join(LABELERS)}")


__all__ = ["Labeler", "OracleLabeler", "get_labeler", "LABELERS"]
