"""One interface for every source of labels: `submit` hands work out, `collect` returns what is ready."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from synthloop.store import NewLabel, Query


@runtime_checkable
class Labeler(Protocol):
    name: str

    def submit(self, queries: Sequence[Query]) -> None:
        """Hand queries out; must be safe to call again with queries already submitted."""

    def collect(self) -> list[NewLabel]:
        """Labels that are ready now; never blocks waiting for slow (human) labelers."""
