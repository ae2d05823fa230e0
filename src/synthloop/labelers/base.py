"""One interface for every source of labels: `submit` hands work out, `collect` returns what is ready.

A labeler reads the store but never writes it: `collect` returns a `Collected` (labels, skipped and failed
queries with their reasons, retries, hand-offs to another labeler) and `submit` returns a `Submitted`; the
round applies each to the store in one transaction (synthloop.store.Store.apply / mark_submitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from synthloop.store import Collected, Job, Query


@dataclass
class Submitted:
    """What a hand-out did: the queries now with the labeler, facts to keep with them, the jobs they went out in."""

    ids: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    jobs: list[Job] = field(default_factory=list)  # a Batch job, stored with its queries marked submitted


@runtime_checkable
class Labeler(Protocol):
    name: str
    # Errors a round logs and goes on from (a server down): the queries stay pending for a later round.
    defers_on: ClassVar[tuple[type[BaseException], ...]]

    def submit(self, queries: Sequence[Query]) -> Submitted:
        """Hand queries out; must be safe to call again with queries already submitted."""

    def collect(self) -> Collected:
        """What is ready now; never blocks waiting for slow (human) labelers."""


__all__ = ["Collected", "Labeler", "Submitted"]
