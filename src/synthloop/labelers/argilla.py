"""Human review in Argilla through the official SDK (2.x).

`submit` (a round's hand-out, or `review push`) sends pending queries as records (record id = example id, so
pushing again updates instead of duplicating), most uncertain first, with the model's prediction as the
suggestion when it is sure enough and the LLM's answer, when there is one, beside it: Argilla keeps one
suggestion per question (before there is a model, the LLM's answer is the suggestion). What is pre-selected,
shown, refreshed, capped and withdrawn is decided in `argilla_queue`.
`collect` takes submitted responses, resolves several annotators by majority and returns one label per
annotator who voted for the winner, as `human:<username>`. Drafts and discarded responses are ignored; ties
stay pending and are reported. The labeler writes nothing to the store: the round (synthloop.loop.round) or the
review commands (synthloop.loop.review) store what it returns.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from synthloop.errors import SynthloopError
from synthloop.labelers import argilla_queue
from synthloop.labelers.argilla_queue import Guess, Pick, hints, model_meta, preselect, question_description
from synthloop.labelers.argilla_sdk import DEFAULT_URL, DOWN_FOR, QUESTION, ArgillaUnreachable, retryable, sdk
from synthloop.labelers.base import Collected, Submitted
from synthloop.labelers.context import LabelContext
from synthloop.store import NewLabel, Query, QueryStatus

if TYPE_CHECKING:
    from synthloop.learn.models import TextClassifier

log = logging.getLogger("synthloop.argilla")


@dataclass
class PushResult:
    pushed: int
    dataset: str
    url: str


@dataclass
class PullResult:
    added: int
    examples: int
    ties: list[str] = field(default_factory=list)  # example ids whose annotators disagree evenly
    waiting: int = 0  # records with fewer submitted responses than min_submitted
    rechecked: int = 0  # label rows from the `-recheck` dataset


class ArgillaLabeler:
    """The `argilla` labeler: `submit` pushes, `collect` pulls whatever reviewers have submitted."""

    name = "argilla"
    # Errors a round logs and goes on from: the queries stay pending for the next round or `review push`.
    defers_on: ClassVar[tuple[type[BaseException], ...]] = (ArgillaUnreachable,)

    def __init__(self, ctx: LabelContext, dataset_suffix: str = ""):
        self.ctx = ctx
        self.task = ctx.task
        self.cfg = ctx.config.argilla
        self.url = self.cfg.api_url or os.environ.get(self.cfg.api_url_env) or DEFAULT_URL
        self.dataset_name = (self.cfg.dataset or self.task.name) + dataset_suffix
        self.ties: list[str] = []
        self.waiting = 0
        self._client = None
        self._dataset = None
        self._model: TextClassifier | None = None
        self.guesses: dict[str, Guess | None] = {}  # the current model's, by example id, as assess() made them

    # connection ---------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable, *args, **kwargs):
        """Retry transient failures (connection refused or reset, 5xx) with growing waits, then fail clearly.
        A server that failed every retry in the last minute gets one try: a round that finds Argilla down
        then waits through the retries once, not at each of its hand-out and collect steps."""
        wait = self.cfg.retry_wait
        down = self.ctx.unreachable
        retries = 0 if time.time() - down.get(self.url, -1e9) < DOWN_FOR else self.cfg.retries
        for attempt in range(retries + 1):
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r".* not found", category=UserWarning)
                    result = fn(*args, **kwargs)
                down.pop(self.url, None)
                return result
            except Exception as err:  # noqa: BLE001 - sorted into retryable and not below
                if not retryable(err):
                    from argilla._exceptions import ArgillaError

                    if isinstance(err, ArgillaError) and what != "connect":
                        raise SynthloopError(f"Argilla at {self.url} refused ({what}): {err}") from None
                    raise
                if attempt == retries:
                    down[self.url] = time.time()
                    raise ArgillaUnreachable(self.url, what, attempt + 1, type(err).__name__) from None
                log.warning("Argilla %s failed (%s); retrying in %.0f s", what, type(err).__name__, wait)
                time.sleep(wait)
                wait *= 2

    @property
    def client(self):
        if self._client is None:
            rg = sdk()
            from argilla._exceptions import ArgillaError

            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                raise SynthloopError(f"set ${self.cfg.api_key_env} to the Argilla API key of an owner or admin "
                                     "(the local server's default is argilla.apikey)")
            try:
                self._client = self.call("connect", rg.Argilla, api_url=self.url, api_key=key,
                                          timeout=int(self.cfg.timeout), retries=2)
            except ArgillaError as err:
                raise SynthloopError(f"cannot use Argilla at {self.url}: {err} — check ${self.cfg.api_key_env} "
                                     f"and ${self.cfg.api_url_env}") from None
        return self._client

    # setup --------------------------------------------------------------------------------------
    def settings(self):
        rg = sdk()
        task = self.task
        guidelines = task.description + "\n\n" + "\n".join(
            f"- **{label.name}**: {label.description}" for label in task.labels)
        return rg.Settings(
            guidelines=guidelines,
            fields=[rg.TextField(name="text", title="Text"),
                    rg.TextField(name="hints", title="Suggestions", use_markdown=True, required=False)],
            questions=[rg.LabelQuestion(name=QUESTION, title="Label", labels=task.label_names,
                                        description=question_description(task))],
            metadata=[rg.IntegerMetadataProperty(name="round"),
                      rg.FloatMetadataProperty(name="uncertainty"),
                      rg.TermsMetadataProperty(name="strategy"),
                      rg.TermsMetadataProperty(name="origin"),
                      rg.TermsMetadataProperty(name="llm_label"),
                      rg.FloatMetadataProperty(name="llm_confidence")],
            distribution=rg.TaskDistribution(min_submitted=self.cfg.min_submitted),
        )

    def existing_dataset(self):
        return self.call("dataset", self.client.datasets, self.dataset_name, workspace=self.cfg.workspace)

    def ensure_dataset(self):
        """The workspace, its annotators and the dataset, each made only if missing."""
        if self._dataset is not None:
            return self._dataset
        rg = sdk()
        client = self.client
        workspace = self.call("workspace", client.workspaces, self.cfg.workspace)
        if workspace is None:
            workspace = self.call("create workspace", rg.Workspace(name=self.cfg.workspace, client=client).create)
        members = {u.username for u in self.call("list users", lambda: list(workspace.users))}
        for username in self.cfg.annotators:
            if username in members:
                continue
            user = self.call("user", client.users, username)
            if user is None:
                password = os.environ.get("ARGILLA_ANNOTATOR_PASSWORD")
                if not password:
                    raise SynthloopError(f"Argilla user {username!r} does not exist: create it, or set "
                                         "$ARGILLA_ANNOTATOR_PASSWORD (8+ characters) to let synthloop create it")
                user = self.call("create user", rg.User(username=username, password=password, role="annotator",
                                                         client=client).create)
            self.call("add user", workspace.add_user, user)
        dataset = self.call("dataset", client.datasets, self.dataset_name, workspace=self.cfg.workspace)
        if dataset is None:
            dataset = self.call("create dataset", rg.Dataset(name=self.dataset_name, workspace=workspace,
                                                              settings=self.settings(), client=client).create)
        labels = list(dataset.settings.questions[QUESTION].labels)
        if sorted(labels) != sorted(self.task.label_names):
            raise SynthloopError(
                f"Argilla dataset {self.dataset_name!r} has labels {labels}, the task has "
                f"{self.task.label_names}; set [argilla] dataset to a new name in synthloop.toml")
        self._dataset = dataset
        return dataset

    # push ---------------------------------------------------------------------------------------
    def use_model(self, model: TextClassifier) -> None:
        """Guess with this model (a round's, just trained) instead of loading the latest."""
        self._model = model

    def _current_model(self) -> TextClassifier | None:
        if self._model is None and self.ctx.store.latest_model() is not None:
            _, self._model = self.ctx.load_model(None)
        return self._model

    def predictions(self, texts: list[str]) -> list[tuple[str, float] | None]:
        model = self._current_model()
        if model is None:
            return [None] * len(texts)
        proba = model.predict_proba(texts)
        return [(str(model.classes_[int(p.argmax())]), float(p.max())) for p in proba]

    def assess(self, queries: Sequence[Query]) -> dict[str, Guess | None]:
        """The current model's guess and uncertainty (the query's own measure) for each query; None
        before there is a model."""
        from synthloop.learn.measures import measure_of, uncertainty

        model = self._current_model()
        if model is None or not queries:
            return {q.example_id: None for q in queries}
        proba = model.predict_proba([q.text for q in queries])
        out: dict[str, Guess | None] = {}
        for strategy in {q.strategy for q in queries}:
            rows = [k for k, q in enumerate(queries) if q.strategy == strategy]
            # The measure the query's score was stored with (synthloop.learn.measures), so a refresh keeps its meaning.
            values = uncertainty(measure_of(strategy), proba[rows])
            for k, value in zip(rows, values):
                p = proba[k]
                out[queries[k].example_id] = Guess(str(model.classes_[int(p.argmax())]), float(p.max()), float(value))
        self.guesses.update(out)
        return out

    def pick(self, guess: Guess | None, llm: dict) -> Pick | None:
        return preselect(guess, llm, self.task.label_names, self.cfg.suggest_min_confidence,
                         self.ctx.config.llm.model)

    def records(self, queries: Sequence[Query]) -> list:
        rg = sdk()
        origins = self.ctx.store.origins([q.example_id for q in queries])
        missing = [q for q in queries if q.example_id not in self.guesses]
        if missing:
            self.assess(missing)
        out = []
        for query in queries:
            guess = self.guesses.get(query.example_id)
            llm = (query.meta or {}).get("llm") or {}
            uncertainty = guess.uncertainty if guess is not None else query.score
            # Three digits: the UI shows metadata as stored, and 0.4987654321 reads worse than 0.499.
            metadata = {"round": query.round, "strategy": query.strategy, "origin": origins.get(query.example_id),
                        "uncertainty": None if uncertainty is None else round(float(uncertainty), 3)}
            if llm.get("label"):
                metadata["llm_label"] = llm["label"]
            if llm.get("confidence") is not None:
                metadata["llm_confidence"] = round(float(llm["confidence"]), 3)
            pick = self.pick(guess, llm)
            suggestions = [] if pick is None else [rg.Suggestion(question_name=QUESTION, value=pick.value,
                                                                 score=pick.score, agent=pick.agent)]
            out.append(rg.Record(id=query.example_id,
                                 fields={"text": query.text,
                                         "hints": hints(query, guess, pick, self.cfg.suggest_min_confidence,
                                                        self.task.labels)},
                                 metadata={k: v for k, v in metadata.items() if v is not None},
                                 suggestions=suggestions))
        return out

    def queue_order(self, queries: Sequence[Query]) -> list[Query]:
        """Most uncertain first (the current model's measure, else the score at selection). Argilla 2.8 shows
        each annotator their pending records in a random order seeded by the user's id, so this order decides
        which records go out under `max_pending`, not the order a reviewer sees them in; reviewers sort by
        the `uncertainty` metadata for that (docs/review.md)."""
        guesses = self.assess(list(queries))

        def key(q: Query):
            guess = guesses.get(q.example_id)
            value = guess.uncertainty if guess is not None else q.score
            return (value is None, -(value or 0.0), q.example_id)

        return sorted(queries, key=key)

    def submit(self, queries: Sequence[Query], on_chunk: Callable[[int, int], None] | None = None,
               on_pushed: Callable[[list[str]], None] | None = None) -> Submitted:
        """Push in chunks, most uncertain first; `on_pushed` hears each chunk's ids once Argilla took it (`review
        push` marks them submitted there and then). Pushing again updates the records (record id = example id).
        Under `[argilla] max_pending`, records already waiting count first and new ones only fill the room left:
        the rest stay pending (not pushed) for a later round or `review push`. The Submitted it returns names the
        model whose guesses the records show, for the store (argilla_queue.pushed_with)."""
        store = self.ctx.store
        queries = list(queries)
        asked = {q.example_id for q in queries}
        again = [q for q in queries if q.submitted_at is not None]
        new = self.queue_order([q for q in queries if q.submitted_at is None])
        if self.cfg.max_pending is not None:
            others = [q for q in store.queries(status=QueryStatus.PENDING, routed_to=self.name, submitted=True)
                      if q.example_id not in asked]
            new = new[:max(0, self.cfg.max_pending - len(others) - len(again))]
        again = self.queue_order(again)
        waiting = argilla_queue.waiting_records(self) if again else {}
        done: list[str] = []

        def pushed(chunk):
            ids = [q.example_id for q in chunk]
            done.extend(ids)
            if on_pushed:
                on_pushed(ids)

        self.log(again + new, self.records, pushed, on_chunk)
        argilla_queue.drop_stale_suggestions(self, again, waiting)
        if not done:
            return Submitted()
        return Submitted(done, model_meta(self.dataset_name, self._model_version()))

    def _model_version(self) -> int | None:
        latest = self.ctx.store.latest_model()
        return None if latest is None else latest.version

    def log(self, items: list, to_records: Callable, pushed: Callable | None = None,
            on_chunk: Callable[[int, int], None] | None = None) -> int:
        if not items:
            return 0
        dataset = self.ensure_dataset()
        done = 0
        for start in range(0, len(items), self.cfg.chunk_size):
            chunk = items[start:start + self.cfg.chunk_size]
            records = to_records(chunk)
            try:
                self.call("push", dataset.records.log, records, batch_size=len(records))
            except SynthloopError as err:
                err.args = (f"{err} Pushed {done} of {len(items)} records before it failed.",)
                raise  # the same type: a round goes on after ArgillaUnreachable, not after a refusal
            if pushed:
                pushed(chunk)
            done += len(chunk)
            if on_chunk:
                on_chunk(done, len(items))
        return done

    # pull ---------------------------------------------------------------------------------------
    def responses(self) -> dict[str, list[tuple[str, str]]]:
        """example id -> [(username, label)] of submitted responses."""
        rg = sdk()
        dataset = self.ensure_dataset()
        users = {str(u.id): u.username for u in self.call("list users", lambda: list(self.client.users))}
        query = rg.Query(filter=rg.Filter(("response.status", "==", "submitted")))
        records = self.call("pull", lambda: list(dataset.records(query=query, with_responses=True)))
        out: dict[str, list[tuple[str, str]]] = {}
        for record in records:
            for response in record.responses[QUESTION] or []:
                if str(getattr(response.status, "value", response.status)) == "submitted":
                    out.setdefault(str(record.id), []).append((users.get(str(response.user_id), str(response.user_id)),
                                                               str(response.value)))
        return out

    def collect(self) -> Collected:
        pending = {q.example_id for q in self.ctx.store.queries(status="pending", routed_to=self.name, submitted=True)}
        if not pending:
            return Collected()
        responses = {eid: votes for eid, votes in self.responses().items() if eid in pending}
        return Collected(labels=self.resolve_all(responses))

    def resolve_all(self, responses: dict[str, list[tuple[str, str]]]) -> list[NewLabel]:
        """Majority per record; one label row per annotator who voted for the winner."""
        known = set(self.task.label_names)
        self.ties, self.waiting = [], 0
        labels = []
        for example_id, votes in sorted(responses.items()):
            votes = [(user, label) for user, label in votes if label in known]
            if len(votes) < self.cfg.min_submitted:
                self.waiting += 1
                continue
            label = resolve([label for _, label in votes])
            if label is None:
                self.ties.append(example_id)
                continue
            counts = dict(Counter(lab for _, lab in votes))
            for user, vote in votes:
                if vote == label:
                    labels.append(NewLabel(example_id, label, f"human:{user}", confidence=counts[label] / len(votes),
                                           meta={"votes": counts, "annotators": dict(votes)}))
        return labels

    def progress(self) -> dict:
        dataset = self.ensure_dataset()
        progress = self.call("progress", dataset.progress, with_users_distribution=True)
        workspace = self.call("workspace", self.client.workspaces, self.cfg.workspace)
        members = [u.username for u in self.call("list users", lambda: list(workspace.users))
                   if str(getattr(u.role, "value", u.role)) == "annotator"]
        return {"dataset": self.dataset_name, "workspace": self.cfg.workspace, "url": self.url, **progress,
                "annotators": per_annotator(progress.get("pending", 0), progress.get("users") or {}, members)}


def per_annotator(waiting: int, users: dict, members: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """username -> submitted, draft, discarded and pending, counted as the review UI counts: pending is the
    records nobody has completed yet (`waiting`) that this user has not answered at all; a record another
    annotator completed is no longer in anyone's queue, and a draft is in the Draft tab. Annotators of the
    workspace who have not answered anything yet are listed too."""
    out = {}
    for name in sorted(set(users) | set(members)):
        done, todo = users.get(name, {}).get("completed", {}), users.get(name, {}).get("pending", {})
        row = {k: done.get(k, 0) + todo.get(k, 0) for k in ("submitted", "draft", "discarded")}
        row["pending"] = max(0, waiting - sum(todo.get(k, 0) for k in ("submitted", "draft", "discarded")))
        out[name] = row
    return out


def resolve(votes: Sequence[str]) -> str | None:
    """Majority label, or None on a tie for first place."""
    ranked = Counter(votes).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]
