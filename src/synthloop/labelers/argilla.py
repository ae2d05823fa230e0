"""Human review in Argilla through the official SDK (2.x).

`push` sends pending queries as records (record id = example id, so pushing again updates instead of
duplicating), with the model's prediction as the suggestion and the LLM's answer, when there is one, beside
it: Argilla keeps one suggestion per question (before there is a model, the LLM's answer is the suggestion).
`pull` takes submitted responses, resolves several annotators by majority and stores one label row per
annotator who voted for the winner, as `human:<username>`. Drafts and discarded responses are ignored; ties
stay pending and are reported.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from synthloop.errors import SynthloopError
from synthloop.labelers.base import Collected, Submitted
from synthloop.store import NewLabel, Query

log = logging.getLogger("synthloop.argilla")

DEFAULT_URL = "http://localhost:6900"
QUESTION = "label"
DOWN_FOR = 60.0  # seconds a failed server gets one try per call instead of the retries


class ArgillaUnreachable(SynthloopError):
    """The server did not answer, even after the retries. A round carries on without it (the loop never waits
    for humans); `review push` and `review pull` stop with this error."""

    def __init__(self, url: str, what: str, tries: int, cause: str):
        self.summary = f"Argilla at {url} did not answer ({what}) after {tries} {'try' if tries == 1 else 'tries'}: {cause}"
        super().__init__(f"{self.summary}. Is the server up (`make argilla`)? Run the command again once it is; "
                         "nothing is stored or pushed twice.")


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


def _sdk():
    try:
        import argilla as rg
        from argilla.records import _dataset_records
    except ImportError:
        raise SynthloopError("the argilla SDK is not installed: pip install 'synthloop[argilla]'") from None
    # The SDK draws a tqdm bar per log() call and warns on every lookup that finds nothing; synthloop
    # pushes in chunks under its own progress bar and treats "not found" as "create it".
    if not getattr(_dataset_records, "_synthloop_quiet", False):
        import functools

        import tqdm

        _dataset_records.tqdm = functools.partial(tqdm.tqdm, disable=True)
        _dataset_records._synthloop_quiet = True
        logging.getLogger("argilla.sdk").setLevel(logging.ERROR)
    return rg


def _retryable(err: Exception) -> bool:
    import httpx
    from argilla._exceptions import ArgillaAPIError  # the SDK's documented error types live here

    if isinstance(err, httpx.TransportError):
        return True
    # Some SDK errors carry status_code=None (no HTTP response at all): not a server error.
    return isinstance(err, ArgillaAPIError) and (getattr(err, "status_code", None) or 0) >= 500


def hints(query: Query, prediction: tuple[str, float] | None) -> str:
    """Markdown shown beside the text: Argilla keeps one suggestion per question, so the LLM's answer
    (when the router sent the example on) is shown here and in the metadata."""
    lines = []
    if prediction is not None:
        lines.append(f"**Model:** {prediction[0]} ({prediction[1]:.2f})")
    llm = (query.meta or {}).get("llm")
    if llm:
        answer = llm.get("label") or "no answer"
        conf = "" if llm.get("confidence") is None else f" ({llm['confidence']:.2f}, {llm.get('confidence_from', '')})"
        lines.append(f"**LLM {llm.get('model', '')}:** {answer}{conf}")
    return "  \n".join(lines) or "No suggestion yet."


class ArgillaLabeler:
    """The `argilla` labeler: `submit` pushes, `collect` pulls whatever reviewers have submitted."""

    name = "argilla"
    # Errors a round logs and goes on from: the queries stay pending for the next round or `review push`.
    defers_on = (ArgillaUnreachable,)

    def __init__(self, project, dataset_suffix: str = ""):
        self.project = project
        self.cfg = project.config.argilla
        self.url = self.cfg.api_url or os.environ.get(self.cfg.api_url_env) or DEFAULT_URL
        self.dataset_name = (self.cfg.dataset or project.task.name) + dataset_suffix
        self.ties: list[str] = []
        self.waiting = 0
        self._client = None
        self._dataset = None
        self._model = None

    # connection ---------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable, *args, **kwargs):
        """Retry transient failures (connection refused or reset, 5xx) with growing waits, then fail clearly.
        A server that failed every retry in the last minute gets one try: a round that finds Argilla down
        then waits through the retries once, not at each of its hand-out and collect steps."""
        wait = self.cfg.retry_wait
        down = self.project.unreachable
        retries = 0 if time.time() - down.get(self.url, -1e9) < DOWN_FOR else self.cfg.retries
        for attempt in range(retries + 1):
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r".* not found", category=UserWarning)
                    result = fn(*args, **kwargs)
                down.pop(self.url, None)
                return result
            except Exception as err:  # noqa: BLE001 - sorted into retryable and not below
                if not _retryable(err):
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
            rg = _sdk()
            from argilla._exceptions import ArgillaError

            key = os.environ.get(self.cfg.api_key_env)
            if not key:
                raise SynthloopError(f"set ${self.cfg.api_key_env} to the Argilla API key of an owner or admin "
                                     "(the local server's default is argilla.apikey)")
            try:
                self._client = self._call("connect", rg.Argilla, api_url=self.url, api_key=key,
                                          timeout=int(self.cfg.timeout), retries=2)
            except ArgillaError as err:
                raise SynthloopError(f"cannot use Argilla at {self.url}: {err} — check ${self.cfg.api_key_env} "
                                     f"and ${self.cfg.api_url_env}") from None
        return self._client

    # setup --------------------------------------------------------------------------------------
    def settings(self):
        rg = _sdk()
        task = self.project.task
        guidelines = task.description + "\n\n" + "\n".join(
            f"- **{label.name}**: {label.description}" for label in task.labels)
        return rg.Settings(
            guidelines=guidelines,
            fields=[rg.TextField(name="text", title="Text"),
                    rg.TextField(name="hints", title="Suggestions", use_markdown=True, required=False)],
            questions=[rg.LabelQuestion(name=QUESTION, title="Label", labels=task.label_names,
                                        description="Pick the label that fits; the suggestion is the model's guess "
                                                    "(the LLM's before there is a model).")],
            metadata=[rg.IntegerMetadataProperty(name="round"),
                      rg.FloatMetadataProperty(name="uncertainty"),
                      rg.TermsMetadataProperty(name="strategy"),
                      rg.TermsMetadataProperty(name="origin"),
                      rg.TermsMetadataProperty(name="llm_label"),
                      rg.FloatMetadataProperty(name="llm_confidence")],
            distribution=rg.TaskDistribution(min_submitted=self.cfg.min_submitted),
        )

    def existing_dataset(self):
        return self._call("dataset", self.client.datasets, self.dataset_name, workspace=self.cfg.workspace)

    def ensure_dataset(self):
        """The workspace, its annotators and the dataset, each made only if missing."""
        if self._dataset is not None:
            return self._dataset
        rg = _sdk()
        client = self.client
        workspace = self._call("workspace", client.workspaces, self.cfg.workspace)
        if workspace is None:
            workspace = self._call("create workspace", rg.Workspace(name=self.cfg.workspace, client=client).create)
        members = {u.username for u in self._call("list users", lambda: list(workspace.users))}
        for username in self.cfg.annotators:
            if username in members:
                continue
            user = self._call("user", client.users, username)
            if user is None:
                password = os.environ.get("ARGILLA_ANNOTATOR_PASSWORD")
                if not password:
                    raise SynthloopError(f"Argilla user {username!r} does not exist: create it, or set "
                                         "$ARGILLA_ANNOTATOR_PASSWORD (8+ characters) to let synthloop create it")
                user = self._call("create user", rg.User(username=username, password=password, role="annotator",
                                                         client=client).create)
            self._call("add user", workspace.add_user, user)
        dataset = self._call("dataset", client.datasets, self.dataset_name, workspace=self.cfg.workspace)
        if dataset is None:
            dataset = self._call("create dataset", rg.Dataset(name=self.dataset_name, workspace=workspace,
                                                              settings=self.settings(), client=client).create)
        labels = list(dataset.settings.questions[QUESTION].labels)
        if sorted(labels) != sorted(self.project.task.label_names):
            raise SynthloopError(
                f"Argilla dataset {self.dataset_name!r} has labels {labels}, the task has "
                f"{self.project.task.label_names}; set [argilla] dataset to a new name in synthloop.toml")
        self._dataset = dataset
        return dataset

    # push ---------------------------------------------------------------------------------------
    def predictions(self, texts: list[str]) -> list[tuple[str, float] | None]:
        if self.project.store.latest_model() is None:
            return [None] * len(texts)
        if self._model is None:
            _, self._model = self.project.load_model()
        model = self._model
        proba = model.predict_proba(texts)
        return [(str(model.classes_[int(p.argmax())]), float(p.max())) for p in proba]

    def records(self, queries: Sequence[Query]) -> list:
        rg = _sdk()
        origins = self.project.store.origins([q.example_id for q in queries])
        out = []
        for query, prediction in zip(queries, self.predictions([q.text for q in queries])):
            llm = (query.meta or {}).get("llm") or {}
            metadata = {"round": query.round, "strategy": query.strategy, "origin": origins.get(query.example_id)}
            if query.score is not None:
                metadata["uncertainty"] = float(query.score)
            if llm.get("label"):
                metadata["llm_label"] = llm["label"]
            if llm.get("confidence") is not None:
                metadata["llm_confidence"] = float(llm["confidence"])
            suggestion = self.suggestion(prediction, llm)
            out.append(rg.Record(id=query.example_id, fields={"text": query.text, "hints": hints(query, prediction)},
                                 metadata={k: v for k, v in metadata.items() if v is not None},
                                 suggestions=[] if suggestion is None else [suggestion]))
        return out

    def suggestion(self, prediction: tuple[str, float] | None, llm: dict):
        """The model's guess; before there is a model, the LLM's. Argilla keeps one suggestion per question,
        so when both exist the LLM's answer stays in the hints field and the metadata."""
        rg = _sdk()
        if prediction is not None:
            return rg.Suggestion(question_name=QUESTION, value=prediction[0], score=round(prediction[1], 4),
                                 agent="synthloop-model")
        if llm.get("label") in self.project.task.label_names:  # Argilla refuses a value outside the labels
            confidence = llm.get("confidence")
            return rg.Suggestion(question_name=QUESTION, value=llm["label"],
                                 score=None if confidence is None else round(float(confidence), 4),
                                 agent=f"llm:{llm.get('model') or self.project.config.llm.model}")
        return None

    def submit(self, queries: Sequence[Query], on_chunk: Callable[[int, int], None] | None = None,
               on_pushed: Callable[[list[str]], None] | None = None) -> Submitted:
        """Push in chunks; `on_pushed` hears each chunk's ids once Argilla took it (`review push` marks them
        submitted there and then). Pushing again updates the records (record id = example id)."""
        queries = list(queries)
        done: list[str] = []

        def pushed(chunk):
            ids = [q.example_id for q in chunk]
            done.extend(ids)
            if on_pushed:
                on_pushed(ids)

        self.log(queries, self.records, pushed, on_chunk)
        return Submitted(done)

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
                self._call("push", dataset.records.log, records, batch_size=len(records))
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
        rg = _sdk()
        dataset = self.ensure_dataset()
        users = {str(u.id): u.username for u in self._call("list users", lambda: list(self.client.users))}
        query = rg.Query(filter=rg.Filter(("response.status", "==", "submitted")))
        records = self._call("pull", lambda: list(dataset.records(query=query, with_responses=True)))
        out: dict[str, list[tuple[str, str]]] = {}
        for record in records:
            for response in record.responses[QUESTION] or []:
                if str(getattr(response.status, "value", response.status)) == "submitted":
                    out.setdefault(str(record.id), []).append((users.get(str(response.user_id), str(response.user_id)),
                                                               str(response.value)))
        return out

    def collect(self) -> Collected:
        store = self.project.store
        pending = {q.example_id for q in store.queries(status="pending", routed_to=self.name, submitted=True)}
        if not pending:
            return Collected()
        responses = {eid: votes for eid, votes in self.responses().items() if eid in pending}
        return Collected(labels=self.resolve_all(responses))

    def resolve_all(self, responses: dict[str, list[tuple[str, str]]]) -> list[NewLabel]:
        """Majority per record; one label row per annotator who voted for the winner."""
        known = set(self.project.task.label_names)
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
        progress = self._call("progress", dataset.progress, with_users_distribution=True)
        workspace = self._call("workspace", self.client.workspaces, self.cfg.workspace)
        members = [u.username for u in self._call("list users", lambda: list(workspace.users))
                   if str(getattr(u.role, "value", u.role)) == "annotator"]
        return {"dataset": self.dataset_name, "workspace": self.cfg.workspace, "url": self.url, **progress,
                "annotators": per_annotator(progress.get("total", 0), progress.get("users") or {}, members)}


def per_annotator(total: int, users: dict, members: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """username -> submitted, draft, discarded and pending, where pending is every record of the dataset the
    user has not submitted or discarded (drafts are still to do). Annotators of the workspace who have not
    answered anything yet are listed too, with everything pending."""
    out = {}
    for name in sorted(set(users) | set(members)):
        done, todo = users.get(name, {}).get("completed", {}), users.get(name, {}).get("pending", {})
        row = {k: done.get(k, 0) + todo.get(k, 0) for k in ("submitted", "draft", "discarded")}
        row["pending"] = max(0, total - row["submitted"] - row["discarded"])
        out[name] = row
    return out


def resolve(votes: Sequence[str]) -> str | None:
    """Majority label, or None on a tie for first place."""
    ranked = Counter(votes).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def push(project, reroute: bool = False, on_chunk=None) -> PushResult:
    """Push every pending query routed to Argilla (or, with reroute, every pending query)."""
    labeler = ArgillaLabeler(project)
    store = project.store
    if reroute:
        store.reroute([q.example_id for q in store.queries(status="pending")], labeler.name)
    pending = store.queries(status="pending", routed_to=labeler.name)
    # Each chunk is marked submitted once Argilla took it, so a push that fails midway keeps what went out.
    pushed = labeler.submit(pending, on_chunk=on_chunk, on_pushed=store.mark_submitted) if pending else Submitted()
    return PushResult(len(pushed.ids), labeler.dataset_name, labeler.url)


def pull(project, rechecks: bool = True) -> PullResult:
    """Labels for pending queries, plus (with rechecks) the answers in the `-recheck` dataset."""
    labeler = ArgillaLabeler(project)
    collected = labeler.collect()
    added = project.store.apply(collected, project.store.current_round())
    result = PullResult(added, len({x.example_id for x in collected.labels}), labeler.ties, labeler.waiting)
    if rechecks:
        from synthloop.labelers.recheck import pull_rechecked

        result.rechecked = pull_rechecked(project).added
    return result


def status(project) -> dict:
    store = project.store
    waiting = len(store.queries(status="pending", routed_to=ArgillaLabeler.name))
    return {**ArgillaLabeler(project).progress(), "pending_in_store": waiting}
