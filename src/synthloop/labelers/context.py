"""What labelers and synthetic generation are given to work with: the store, the settings, the LLM client, the
spending limit and a way to load a stored model. `Project.label_context()` builds it; a round builds it once and
hands the same one to every labeler, so they share the LLM client, the budget and what is known to be down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from synthloop.config import Config
from synthloop.loop.budget import Budget
from synthloop.store import Store
from synthloop.task import TaskSpec

if TYPE_CHECKING:
    from synthloop.learn.models import TextClassifier
    from synthloop.llm.client import LLMClient, Result


@dataclass
class LabelContext:
    store: Store
    config: Config
    llm_client: Callable[[], LLMClient]  # made on first use: a round without an LLM labeler needs no key
    load_model: Callable[[int | None], tuple[int, TextClassifier]]  # a stored model (None: the latest)
    budget: Budget = field(default_factory=Budget)  # what the LLM may still spend (nightly --max-cost)
    # Server URL -> when it last failed every retry: one process's labelers try a server that is down once.
    unreachable: dict[str, float] = field(default_factory=dict)
    # The project's embedding store (learn.features): generation's embedding checks keep their vectors there,
    # so the model later reads them instead of embedding the synthetic texts again. None: kept in memory only.
    feature_dir: str | None = None

    @property
    def task(self) -> TaskSpec:
        return self.config.task

    def usage_recorder(self, purpose: str, round_: int | None) -> Callable[[Result], None]:
        """For complete_json_many(on_result=...): each request's usage is stored as it completes, so spend
        limits hold across a killed run."""
        return lambda result: self.record_llm_usage([result], purpose, round_)

    def record_llm_usage(self, results: list[Result], purpose: str, round_: int | None) -> None:
        model = self.config.llm.model
        self.store.record_llm_calls([
            {"purpose": purpose, "model": model, "prompt_tokens": r.usage.prompt_tokens,
             "completion_tokens": r.usage.completion_tokens, "cost": r.usage.cost, "latency": r.usage.latency,
             "cached": r.cached, "ok": r.value is not None, "round": round_}
            for r in results
        ])
