"""USD per 1M tokens (input, output). Override or extend with [llm.prices] in synthloop.toml.

Standard-tier list prices; check https://openai.com/api/pricing when they change.
"""

from __future__ import annotations

PRICES: dict[str, dict[str, float]] = {
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
    "o4-mini": {"input": 1.10, "output": 4.40},
    "o3": {"input": 2.00, "output": 8.00},
    "o3-mini": {"input": 1.10, "output": 4.40},
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half
FREE = {"input": 0.0, "output": 0.0}


def _lookup(model: str, prices: dict[str, dict[str, float]] | None) -> dict[str, float] | None:
    table = {**PRICES, **(prices or {})}
    # Longest name first, so gpt-4o-mini-2024-07-18 is gpt-4o-mini, not gpt-4o.
    for name in sorted(table, key=len, reverse=True):
        if model == name or model.startswith(name + "-"):
            return table[name]
    return None


def is_priced(model: str, prices: dict[str, dict[str, float]] | None = None) -> bool:
    return _lookup(model, prices) is not None


def price(model: str, prices: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """Price of a model; dated names (gpt-4o-2024-08-06) fall back to their family. Unknown models
    (a local server) cost nothing."""
    return _lookup(model, prices) or FREE


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int, batch: bool = False,
             prices: dict[str, dict[str, float]] | None = None) -> float:
    p = price(model, prices)
    cost = (prompt_tokens * p["input"] + completion_tokens * p["output"]) / 1_000_000
    return cost * (BATCH_DISCOUNT if batch else 1.0)
