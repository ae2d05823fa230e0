"""Sources of labels behind one interface."""

from __future__ import annotations

from synthloop.errors import SynthloopError
from synthloop.labelers.base import Labeler
from synthloop.labelers.context import LabelContext
from synthloop.labelers.oracle import OracleLabeler

LABELERS = ("oracle", "llm", "argilla", "hybrid", "llm-batch")


def get_labeler(name: str, ctx: LabelContext) -> Labeler:
    """The labeler of that name, given what it uses (a round hands every labeler the same context)."""
    if name == "oracle":
        return OracleLabeler(ctx.store)
    if name == "llm":
        from synthloop.labelers.llm import LLMLabeler

        return LLMLabeler(ctx)
    if name == "llm-batch":
        from synthloop.labelers.batch import BatchLabeler

        return BatchLabeler(ctx)
    if name == "argilla":
        from synthloop.labelers.argilla import ArgillaLabeler

        return ArgillaLabeler(ctx)
    if name == "hybrid":
        from synthloop.labelers.router import HybridLabeler

        return HybridLabeler(ctx)
    raise SynthloopError(f"unknown labeler {name!r}; choose one of {', '.join(LABELERS)}")


__all__ = ["LabelContext", "Labeler", "OracleLabeler", "get_labeler", "LABELERS"]
