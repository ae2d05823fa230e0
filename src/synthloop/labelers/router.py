"""The hybrid labeler: the LLM answers first; the answers worth a human's time go to Argilla.

An example goes to humans when the LLM fails or abstains, answers with low confidence, or disagrees
with a model that is confident ([router] thresholds in synthloop.toml). Accepted LLM answers are labels
at once; the rest are rerouted to the `argilla` labeler with the LLM's answer kept beside the query, so
reviewers see both. The loop never waits for them: later rounds collect what reviewers have submitted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from synthloop.labelers.base import Collected, Submitted
from synthloop.labelers.context import LabelContext
from synthloop.labelers.llm import LLMLabeler, Outcome
from synthloop.store import Query

log = logging.getLogger("synthloop.router")


@dataclass(frozen=True)
class Decision:
    to_human: bool
    reason: str


def decide(outcome: Outcome, prediction: tuple[str, float] | None, llm_min_confidence: float,
           model_confident: float) -> Decision:
    if outcome.label is None:
        return Decision(True, "abstained" if outcome.abstained else "llm-failed")
    if outcome.confidence is None or outcome.confidence < llm_min_confidence:
        return Decision(True, "llm-unsure")
    if prediction is not None and prediction[1] >= model_confident and prediction[0] != outcome.label:
        return Decision(True, "disagrees-with-model")
    return Decision(False, "llm-confident")


class HybridLabeler:
    name = "hybrid"
    defers_on: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, ctx: LabelContext):
        self.ctx = ctx
        self.llm = LLMLabeler(ctx)
        self.routed: dict[str, int] = {}  # reason -> count, for the last collect

    def submit(self, queries: Sequence[Query]) -> Submitted:
        return Submitted([q.example_id for q in queries])

    def collect(self) -> Collected:
        """The LLM's confident answers as labels; the rest handed off to the `argilla` labeler with the LLM's
        answer beside them (the round reroutes them and pushes them out)."""
        from synthloop.labelers.argilla import ArgillaLabeler

        pending = self.llm.affordable(self.ctx.store.queries(status="pending", routed_to=self.name, submitted=True))
        if not pending:
            return Collected()
        humans = ArgillaLabeler(self.ctx)
        predictions = humans.predictions([q.text for q in pending])
        cfg = self.ctx.config.router
        model_name = self.ctx.config.llm.model
        out = Collected()
        self.routed = {}
        for query, outcome, prediction in zip(pending, self.llm.answer(pending), predictions):
            decision = decide(outcome, prediction, cfg.llm_min_confidence, cfg.model_confident)
            self.routed[decision.reason] = self.routed.get(decision.reason, 0) + 1
            if not decision.to_human:
                out.labels.append(self.llm.to_label(query, outcome))
                continue
            out.handoff[query.example_id] = (humans.name, {"llm": {
                "model": model_name, "label": outcome.label, "confidence": outcome.confidence,
                "confidence_from": outcome.confidence_from, "reason": decision.reason}})
        if out.handoff:
            log.info("%d of %d answers go to reviewers (%s)", len(out.handoff), len(pending),
                     ", ".join(f"{k} {v}" for k, v in sorted(self.routed.items()) if k != "llm-confident"))
        return out
