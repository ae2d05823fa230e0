"""Spending limits: what the LLM may still spend (nightly --max-cost). The one place that checks a cost
against the limit and takes it off."""

from __future__ import annotations

from collections.abc import Sequence


class Budget:
    """Dollars left to spend, or no cap (left is None). Labelers ask `affordable` before they spend, and
    `spend` what they did (or committed: a Batch job is paid when it finishes, but bounded when it goes out)."""

    def __init__(self, left: float | None = None):
        self.left = None if left is None else max(0.0, float(left))

    @property
    def capped(self) -> bool:
        return self.left is not None

    @property
    def spent_out(self) -> bool:
        return self.left is not None and self.left <= 0

    def affordable(self, costs: Sequence[float]) -> int:
        """How many of the first costs fit in what is left, in order (all of them without a cap)."""
        if self.left is None:
            return len(costs)
        fit, total = 0, 0.0
        while fit < len(costs) and total + costs[fit] <= self.left:
            total += costs[fit]
            fit += 1
        return fit

    def spend(self, amount: float) -> None:
        if self.left is not None:
            self.left = max(0.0, self.left - amount)

    def __repr__(self) -> str:
        return "Budget(no cap)" if self.left is None else f"Budget(${self.left:.4f} left)"
