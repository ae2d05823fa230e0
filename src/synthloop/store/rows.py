"""The store's typed rows: what its methods take and return, and the statuses it owns."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, NamedTuple, TypeVar

# A human's word beats an imported label, which beats the simulated oracle, an LLM, then synthetic text.
SOURCE_PRIORITY = {"human": 0, "import": 1, "oracle": 2, "llm": 3, "synthetic": 4}


def source_rank(source: str) -> int:
    return SOURCE_PRIORITY.get(source.split(":", 1)[0], 5)


class QueryStatus(str, Enum):  # noqa: UP042 - StrEnum would change str()/format() of a member, which callers may print
    """Where a query stands. Every change of it is a Store method (store/queries.py), in one transaction with what it brings."""

    PENDING = "pending"  # selected; with its labeler (submitted_at set) or waiting to go out
    LABELED = "labeled"  # its label is stored
    SKIPPED = "skipped"  # the labeler declined (abstained, no gold): the reason says why
    FAILED = "failed"  # the labeler could not answer: the reason says why; `synthloop requeue` retries
    HELD = "held"  # held back by a running nightly job (keeps it within --max-labels); pending again after
    WITHDRAWN = "withdrawn"  # taken out of the review queue (now confident): its example stays out of the pool


@dataclass(frozen=True)
class Query:
    id: int
    round: int
    example_id: str
    text: str
    strategy: str
    score: float | None
    routed_to: str
    status: str
    submitted_at: float | None = None
    meta: dict | None = None
    reason: str | None = None


class TrainingRow(NamedTuple):
    """One labeled example as training sees it (a tuple too, for code that unpacks it)."""

    example_id: str
    text: str
    label: str
    source: str

    @property
    def real(self) -> bool:
        """A label from a person, an import, the oracle or an LLM: not synthetic text."""
        return source_rank(self.source) < source_rank("synthetic")


class LabelCount(NamedTuple):
    source: str
    label: str
    n: int


@dataclass(frozen=True)
class NewLabel:
    example_id: str
    label: str
    source: str
    confidence: float | None = None
    cost: float = 0.0
    meta: dict | None = None

@dataclass
class Collected:
    """What a labeler's collect() found, applied to the store in one transaction (Store.apply)."""

    labels: list[NewLabel] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # example id -> reason
    failed: dict[str, str] = field(default_factory=dict)  # example id -> reason
    retry: dict[str, dict] = field(default_factory=dict)  # stay pending, asked again later; meta merged in
    handoff: dict[str, tuple[str, dict]] = field(default_factory=dict)  # example id -> (labeler, meta): rerouted
    meta: dict = field(default_factory=dict)  # project facts set with them
    llm_calls: list[dict] = field(default_factory=list)  # LLM usage recorded with them (a Batch job's answers)
    jobs: list[Job] = field(default_factory=list)  # outside jobs' new states (a Batch job answered, done, lost)

    def __add__(self, other: Collected) -> Collected:
        return Collected(self.labels + other.labels, {**self.skipped, **other.skipped}, {**self.failed, **other.failed},
                         {**self.retry, **other.retry}, {**self.handoff, **other.handoff}, {**self.meta, **other.meta},
                         self.llm_calls + other.llm_calls, self.jobs + other.jobs)


IN_CHUNK = 900  # ids per `IN (...)`: SQLite caps the bound parameters of one statement


K = TypeVar("K")


def in_chunks(ids: Iterable[K]) -> Iterator[list[K]]:
    """The ids in slices small enough for one `column IN (...)`; every chunked IN query goes through here."""
    ids = list(ids)
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start:start + IN_CHUNK]


class LabelEvent(NamedTuple):
    """One stored label as the report counts it: when it arrived, not which text it names."""

    source: str
    label: str
    round: int | None
    created_at: float


class ExampleLabel(NamedTuple):
    """One stored label with its example's text (every source's, not only the best as in TrainingRow)."""

    example_id: str
    text: str
    label: str
    source: str


class JobStatus(str, Enum):  # noqa: UP042 - as QueryStatus
    """Where an outside job (an OpenAI Batch API job) stands."""

    OPEN = "open"  # submitted; its answers are not downloaded yet
    ANSWERED = "answered"  # answers downloaded and their usage recorded (exactly once); some queries may wait
    DONE = "done"  # none of its queries is pending any more
    LOST = "lost"  # the service no longer knows it: its queries go out again in another job


@dataclass(frozen=True)
class Job:
    """An outside job and the queries (by example id, in the order sent) it covers."""

    kind: str  # the labeler that made it
    external_id: str  # the service's id of it
    status: JobStatus
    example_ids: tuple[str, ...]
    model: str | None = None
    round: int | None = None
    estimated_cost: float = 0.0
    cost: float | None = None
    error: str | None = None
    detail: dict = field(default_factory=dict)  # e.g. the service's status, when it was answered
    created_at: float = 0.0  # when it was submitted
    updated_at: float = 0.0


# Rounds, model versions, nightly runs and pool files: one field per column, in the table's column order, so a
# row's dataclasses.asdict() is what `dict(row)` gave before (the JSON of `status`, the report, a run record).
@dataclass(frozen=True)
class RoundRow:
    number: int
    status: str  # open | done
    model_version: int | None
    metrics: dict | None
    counts: dict | None
    cost: float
    timings: dict | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class ModelRow:
    version: int
    round: int | None
    name: str
    path: str  # relative to the project folder
    n_train: int
    metrics: dict | None  # of a model trained outside a round (the loop's last labels); a round keeps its own
    created_at: float


@dataclass(frozen=True)
class RunRow:
    """A nightly run's record."""

    id: int
    kind: str
    status: str  # running | done | failed | killed
    summary: dict | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class PoolFileRow:
    """A pool file a nightly run imported: size and modification time say whether it changed since."""

    path: str
    size: int
    mtime: float
    rows: int
    added: int
    imported_at: float


@dataclass(frozen=True)
class LLMUsage:
    """LLM calls of one purpose and model, totalled: cache hits and failures counted among the calls too."""

    purpose: str
    model: str
    calls: int
    cached: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency: float


@dataclass(frozen=True)
class RoundUsage:
    """LLM calls of one round (None: made outside any round), totalled."""

    round: int | None
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency: float


def as_dicts(rows: Iterable[Any]) -> list[dict]:
    """Rows as the JSON outputs show them (`status --json`, report.json): one key per column, in column order."""
    return [asdict(r) for r in rows]
