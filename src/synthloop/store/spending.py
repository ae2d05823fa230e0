"""What the LLM cost: every call's usage, totals per purpose, model and round, and the response cache."""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa

from synthloop.store.base import StoreBase
from synthloop.store.rows import LLMUsage, RoundUsage
from synthloop.store.schema import llm_cache, llm_calls


class SpendingMethods(StoreBase):
    """Store's LLM spending part: usage and the response cache."""

    def cache_get(self, key: str) -> dict | None:
        """The JSON document the LLM client cached under key: its shape is the client's (llm.client), not a row."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(llm_cache.c.value).where(llm_cache.c.key == key)).scalar()

    def cache_put(self, key: str, value: dict) -> None:
        with self.engine.begin() as conn:
            self._insert_ignore(conn, llm_cache, [{"key": key, "value": value, "created_at": time.time()}])

    def record_llm_calls(self, calls: Sequence[dict], meta_values: dict | None = None) -> None:
        """calls: dicts with purpose, model, prompt_tokens, completion_tokens, cost, latency, cached, ok, round.
        meta_values ({key: value}) are set in the same transaction, so a kill between the two can neither lose a
        cost nor record it twice (a Batch job's usage goes with its new state through Store.apply)."""
        now = time.time()
        with self.engine.begin() as conn:
            if calls:
                conn.execute(llm_calls.insert(), [{"created_at": now, **c} for c in calls])
            for key, value in (meta_values or {}).items():
                self._upsert_meta(conn, key, value)

    def llm_usage(self, round_: int | None = None) -> list[LLMUsage]:
        """Totals per (purpose, model), in that order: calls, tokens in/out, $ and seconds; cache hits counted apart.
        (SQLite's GROUP BY happens to sort; PostgreSQL's may hash, so the order is asked for.)"""
        stmt = sa.select(
            llm_calls.c.purpose, llm_calls.c.model, sa.func.count().label("calls"),
            sa.func.sum(sa.case((llm_calls.c.cached, 1), else_=0)).label("cached"),
            sa.func.sum(sa.case((llm_calls.c.ok, 0), else_=1)).label("failed"),
            sa.func.sum(llm_calls.c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(llm_calls.c.completion_tokens).label("completion_tokens"),
            sa.func.sum(llm_calls.c.cost).label("cost"), sa.func.sum(llm_calls.c.latency).label("latency"),
        ).group_by(llm_calls.c.purpose, llm_calls.c.model).order_by(llm_calls.c.purpose, llm_calls.c.model)
        if round_ is not None:
            stmt = stmt.where(llm_calls.c.round == round_)
        with self.engine.connect() as conn:
            return [LLMUsage(**r._mapping) for r in conn.execute(stmt)]

    def llm_cost_since(self, since: float, exclude_purposes: Sequence[str] = ()) -> float:
        """$ of the LLM calls recorded at or after `since` (a time.time()), e.g. what a night has spent so far."""
        stmt = sa.select(sa.func.coalesce(sa.func.sum(llm_calls.c.cost), 0.0)).where(llm_calls.c.created_at >= since)
        if exclude_purposes:
            stmt = stmt.where(llm_calls.c.purpose.not_in(list(exclude_purposes)))
        with self.engine.connect() as conn:
            return float(conn.execute(stmt).scalar_one())  # an aggregate: always one row, coalesced to 0.0

    def llm_usage_by_round(self) -> list[RoundUsage]:
        """Calls, tokens, $ and seconds per round (None: calls made outside any round), None first on both databases
        (SQLite sorts NULL first, PostgreSQL last unless told)."""
        stmt = sa.select(
            llm_calls.c.round, sa.func.count().label("calls"),
            sa.func.sum(llm_calls.c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(llm_calls.c.completion_tokens).label("completion_tokens"),
            sa.func.sum(llm_calls.c.cost).label("cost"), sa.func.sum(llm_calls.c.latency).label("latency"),
        ).group_by(llm_calls.c.round).order_by(llm_calls.c.round.nulls_first())
        with self.engine.connect() as conn:
            return [RoundUsage(**r._mapping) for r in conn.execute(stmt)]
