"""The LLM labeler: zero- or few-shot, the label constrained to the task's labels (or "abstain")."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, create_model

from synthloop.config import LLMConfig
from synthloop.labelers.base import Collected, Submitted
from synthloop.labelers.context import LabelContext
from synthloop.llm.quoting import DATA_RULE, quote
from synthloop.store import NewLabel, Query, Store, source_rank
from synthloop.task import TaskSpec
from synthloop.textcap import DEFAULT_MAX_TEXT_CHARS

if TYPE_CHECKING:
    from synthloop.llm.client import Result

log = logging.getLogger(__name__)

ABSTAIN = "abstain"


def answer_model(task: TaskSpec, abstain: bool = True) -> type[BaseModel]:
    labels = tuple(task.label_names) + ((ABSTAIN,) if abstain else ())
    choice: Any = Literal[labels]  # a Literal of the task's labels, made at run time
    return create_model("LabelAnswer", label=(choice, ...),
                        confidence=(float, Field(ge=0.0, le=1.0)))


@dataclass
class Outcome:
    label: str | None  # None: failed or abstained
    confidence: float | None
    confidence_from: str | None  # logprobs | self-reported
    abstained: bool
    error: str | None
    cost: float
    transient: bool = False  # the server did not answer: the query may be asked again


def few_shot_examples(store: Store, task: TaskSpec, per_class: int) -> list[tuple[str, str]]:
    """Balanced shots: real labels first (deterministic, so prompts stay cacheable), then the task's examples."""
    if per_class <= 0:
        return []
    by_class: dict[str, list[str]] = {lab: [] for lab in task.label_names}
    for row in store.training_set():
        if source_rank(row.source) < source_rank("llm") and len(by_class.get(row.label, [])) < per_class:
            by_class[row.label].append(row.text)
    for text, label in task.examples():
        if len(by_class[label]) < per_class:
            by_class[label].append(text)
    return [(text, label) for label, texts in by_class.items() for text in texts]


def labeling_messages(task: TaskSpec, text: str, shots: Sequence[tuple[str, str]], abstain: bool = True,
                      max_chars: int | None = DEFAULT_MAX_TEXT_CHARS) -> list[dict]:
    """The chat messages that ask for one text's label: every pool text (the shots too) quoted between
    delimiters and capped at max_chars ([limits] max_text_chars), see synthloop.llm.quoting."""
    choices = task.label_names + ([ABSTAIN] if abstain else [])
    system = (
        "You label texts for a classifier.\n" + task.render() + "\n\n"
        f'Answer with JSON {{"label": one of {choices}, "confidence": 0..1}}.'
        + (f' Use "{ABSTAIN}" only if the text fits no label.' if abstain else "")
        # Pool texts come from anyone: a text that says "ignore the above" is a text to label, not an order.
        + "\nEach user message is one text to label. " + DATA_RULE
    )
    messages = [{"role": "system", "content": system}]
    for shot_text, shot_label in shots:
        messages.append({"role": "user", "content": quote(shot_text, max_chars)})
        messages.append({"role": "assistant", "content": f'{{"label": "{shot_label}", "confidence": 1.0}}'})
    messages.append({"role": "user", "content": quote(text, max_chars)})
    return messages


def logprob_confidence(logprobs, label: str) -> float | None:
    """Probability of the label's own tokens in the answer, from the server's token log-probabilities."""
    if not logprobs:
        return None
    tokens = [(t["token"], t["logprob"]) for t in logprobs]
    content = "".join(tok for tok, _ in tokens)
    key = content.find('"label"')
    start = content.find(label, key if key >= 0 else 0)
    if start < 0:
        return None
    end, pos, total = start + len(label), 0, 0.0
    for tok, lp in tokens:
        if pos < end and pos + len(tok) > start:
            total += lp
        pos += len(tok)
    return math.exp(total)


MAX_ANSWER_TOKENS = 60  # a label and a confidence; also the bound the budget guard relies on


def estimated_cost(cfg: LLMConfig, messages: list[dict]) -> float:
    """An upper estimate of one labeling call: ~3 characters a token in, the answer cap out."""
    from synthloop.llm.pricing import cost_usd

    chars = sum(len(m["content"]) for m in messages)
    return cost_usd(cfg.model, chars // 3 + 20, MAX_ANSWER_TOKENS, prices=cfg.prices)


def label_texts(ctx: LabelContext, texts: Sequence[str], purpose: str = "label",
                round_: int | None = None) -> list[Outcome]:
    """Label texts with the project's LLM; every call's usage goes to the store."""
    client = ctx.llm_client()
    cfg = ctx.config.llm
    schema = answer_model(ctx.task, cfg.abstain)
    shots = few_shot_examples(ctx.store, ctx.task, cfg.few_shot)
    cap = ctx.config.limits.max_text_chars
    requests = [labeling_messages(ctx.task, text, shots, cfg.abstain, cap) for text in texts]
    results = client.complete_json_many(requests, schema, temperature=cfg.label_temperature, logprobs=cfg.logprobs,
                                        max_tokens=MAX_ANSWER_TOKENS, on_result=ctx.usage_recorder(purpose, round_))
    return [outcome_of(result) for result in results]


def outcome_of(result: Result) -> Outcome:
    """What one answer (an llm.client Result, from a direct call or a Batch API job) means: a label with its
    confidence, an abstention, or a failure."""
    cost = result.usage.cost if result.usage else 0.0
    if result.value is None:
        return Outcome(None, None, None, False, result.error or "invalid answer", cost,
                       transient=result.transient)
    answer: Any = result.value  # an answer_model instance: its fields are made at run time
    label = answer.label
    if label == ABSTAIN:
        return Outcome(None, None, None, True, None, cost)
    confidence = logprob_confidence(result.logprobs, label)
    source = "logprobs"
    if confidence is None:
        confidence, source = answer.confidence, "self-reported"
    return Outcome(label, confidence, source, False, None, cost)


class LLMLabeler:
    """Answers at once: `collect` labels every submitted query it has not answered yet. Responses are
    cached in the store, so a run killed midway pays nothing again for what it already asked."""

    name = "llm"
    defers_on: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, ctx: LabelContext):
        self.ctx = ctx

    def submit(self, queries: Sequence[Query]) -> Submitted:
        return Submitted([q.example_id for q in queries])

    def affordable(self, pending: list[Query]) -> list[Query]:
        """The first queries whose estimated cost fits what is left of the budget (nightly's $ cap); the
        rest stay pending for the next run."""
        budget, cfg = self.ctx.budget, self.ctx.config.llm
        if not budget.capped or not pending:
            return pending
        shots = few_shot_examples(self.ctx.store, self.ctx.task, cfg.few_shot)
        cap = self.ctx.config.limits.max_text_chars
        costs = [estimated_cost(cfg, labeling_messages(self.ctx.task, q.text, shots, cfg.abstain, cap))
                 for q in pending]
        return pending[:budget.affordable(costs)]

    def answer(self, pending: list[Query]) -> list[Outcome]:
        outcomes = label_texts(self.ctx, [q.text for q in pending], round_=self.ctx.store.current_round())
        self.ctx.budget.spend(sum(o.cost for o in outcomes))
        return outcomes

    def to_label(self, query: Query, outcome: Outcome) -> NewLabel:
        assert outcome.label is not None, "only an answer with a label becomes one"
        return NewLabel(query.example_id, outcome.label, f"llm:{self.ctx.config.llm.model}", outcome.confidence,
                        outcome.cost, meta={"confidence_from": outcome.confidence_from})

    def collect(self) -> Collected:
        pending = self.affordable(self.ctx.store.queries(status="pending", routed_to=self.name, submitted=True))
        if not pending:
            return Collected()
        return self.outcomes(pending, self.answer(pending))

    def outcomes(self, pending: list[Query], answers: list[Outcome]) -> Collected:
        """What the answers mean for their queries: a label, an abstention (skipped), a failure (with the error
        as its reason), or no answer from the server (asked again, up to [llm] max_unanswered times)."""
        out = Collected()
        limit = self.ctx.config.llm.max_unanswered
        for query, outcome in zip(pending, answers):
            if outcome.label is not None:
                out.labels.append(self.to_label(query, outcome))
            elif outcome.abstained:
                out.skipped[query.example_id] = "llm abstained"
            elif outcome.transient:
                asked = (query.meta or {}).get("llm_unanswered", 0) + 1
                if asked >= limit:
                    out.failed[query.example_id] = f"llm unanswered {asked} times: {outcome.error or 'no answer'}"
                else:  # stays pending: the next collect asks again, so no example is lost to a short outage
                    out.retry[query.example_id] = {"llm_unanswered": asked}
            else:
                out.failed[query.example_id] = f"llm: {outcome.error or 'invalid answer'}"
        if out.retry:
            log.warning("the LLM API did not answer %d of %d queries (after its retries); they stay pending for the "
                        "next round or `synthloop label` (at most %d asks each, [llm] max_unanswered)",
                        len(out.retry), len(pending), limit)
        gave_up = sum(1 for reason in out.failed.values() if reason.startswith("llm unanswered"))
        if gave_up:
            log.warning("%d queries went unanswered %d times and are marked failed", gave_up, limit)
        return out
