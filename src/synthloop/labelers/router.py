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

from synthloop.labelers.llm import LLMLabeler, Outcome
from synthloop.store import NewLabel, Query

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

    def __init__(self, project):
        self.project = project
        self.llm = LLMLabeler(project)
        self.routed: dict[str, int] = {}  # reason -> count, for the last collect

    def submit(self, queries: Sequence[Query]) -> None:
        pass

    def collect(self) -> list[NewLabel]:
        from synthloop.labelers.argilla import ArgillaLabeler, ArgillaUnreachable

        store = self.project.store
        pending = self.llm.affordable(store.queries(status="pending", routed_to=self.name, submitted=True))
        if not pending:
            return []
        humans = ArgillaLabeler(self.project)
        predictions = humans.predictions([q.text for q in pending])
        cfg = self.project.config.router
        model_name = self.project.config.llm.model
        labels, doubtful, notes = [], [], {}
        self.routed = {}
        for query, outcome, prediction in zip(pending, self.llm.answer(pending), predictions):
            decision = decide(outcome, prediction, cfg.llm_min_confidence, cfg.model_confident)
            self.routed[decision.reason] = self.routed.get(decision.reason, 0) + 1
            if not decision.to_human:
                labels.append(self.llm.to_label(query, outcome))
                continue
            doubtful.append(query.example_id)
            notes[query.example_id] = {"llm": {"model": model_name, "label": outcome.label,
                                               "confidence": outcome.confidence,
                                               "confidence_from": outcome.confidence_from, "reason": decision.reason}}
        if doubtful:
            store.set_query_meta(notes)
            store.reroute(doubtful, humans.name)
            try:
                humans.submit(store.queries(status="pending", routed_to=humans.name, submitted=False))
            except ArgillaUnreachable as err:
                # The LLM's labels are good either way; the next round or `synthloop review push` sends the rest.
                # A refusal (wrong key, other labels) is not caught: retrying cannot fix it.
                log.warning("%s; the queries for reviewers stay pending and go out with the next round or "
                            "`synthloop review push`", getattr(err, "summary", err))
        return labels
