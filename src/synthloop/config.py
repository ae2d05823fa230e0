"""`synthloop.toml`: the task plus model, loop and labeler settings. Secrets never live here."""

from __future__ import annotations

from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synthloop.errors import SynthloopError
from synthloop.task import TaskSpec, format_validation_error, read_toml
from synthloop.textcap import DEFAULT_MAX_TEXT_CHARS

CONFIG_FILE = "synthloop.toml"
STATE_DIR = ".synthloop"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    name: str = "hybrid-lr"  # TF-IDF + sentence embedding, zero-shot before the first label (benchmarks/al.md)
    # Real labels count 1.0; synthetic and task examples this much, so a few real labels outweigh them.
    synthetic_weight: float = Field(0.5, ge=0.0)
    calibrate: bool | None = None  # None: the model's default (hybrid-lr: off; tfidf-lr, embed-lr: on)
    embed_model: str | None = None  # None: hybrid-lr use-multilingual, embed-lr all-MiniLM-L6-v2
    # Self-training: > 0 adds the unlabeled texts the model is surest of as weak labels of this weight
    # (synthloop.learn.selftrain). Off: it did not beat the default (benchmarks/al_explore.md).
    self_train_weight: float = Field(0.0, ge=0.0, lt=1.0)


class LoopConfig(_Section):
    strategy: str = "cold-start"  # central picks until every class has 2 real labels or 2 batches are in, then diverse margin
    batch_size: int = Field(25, ge=1)
    labeler: str = "oracle"
    seed: int = 0
    # Fitting TF-IDF on pool texts too (no labels used) gives a vocabulary beyond the few labeled texts.
    featurizer_pool_sample: int = Field(20000, ge=0)
    # Stabilizing predictions: stop when consecutive models agree this much on the stop set, this many rounds.
    stop_kappa: float = Field(0.99, gt=0.0, le=1.0)
    stop_window: int = Field(3, ge=1)
    stop_set_size: int = Field(1000, ge=10)


class LLMConfig(_Section):
    """The LLM used to generate synthetic data and to label. The key is read from the environment only."""

    model: str = "gpt-4o"
    base_url: str | None = None  # None: $OPENAI_BASE_URL, else OpenAI's own API
    api_key_env: str = "OPENAI_API_KEY"
    base_url_env: str = "OPENAI_BASE_URL"
    response_format: str = "auto"  # auto | json_schema | json_object_schema | prompt
    # Unset: 1 request in flight and 600 s a call for a server on this machine (llama.cpp's serves one at a
    # time), 4 and 60 s elsewhere; llm.client.LLMClient decides (it knows $OPENAI_BASE_URL too).
    timeout: float | None = Field(None, gt=0)
    max_retries: int = Field(4, ge=0)
    concurrency: int | None = Field(None, ge=1)
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)  # model -> {"input": $/1M, "output": $/1M}
    label_temperature: float = Field(0.0, ge=0.0)
    few_shot: int = Field(2, ge=0)  # examples per class in the labeling prompt
    logprobs: bool = True
    # Let the labeler answer "abstain" (the query is skipped). Very small models pick it for most texts:
    # turn it off to force one of the task's labels.
    abstain: bool = True
    # A query the API never answered (429/5xx after retries, timeout) stays pending and is asked again by the
    # next collect; after this many unanswered asks it is marked failed so an outage-proof loop still ends.
    max_unanswered: int = Field(5, ge=1)
    # Seconds one batch of requests (a round's labeling, one generate step) may take: requests not sent by
    # then are answered "transient" and asked again by the next round, so a hanging server cannot stall a
    # round for hours. Requests already in flight still end within timeout x (max_retries + 1).
    deadline: float = Field(900.0, gt=0)


class SynthConfig(_Section):
    per_call: int = Field(5, ge=1, le=20)
    temperature: float = Field(0.9, ge=0.0)
    min_chars: int = Field(8, ge=1)
    max_chars: int = Field(400, ge=10)
    near_duplicate: float = Field(0.9, gt=0.0, le=1.0)
    dedup_pool_sample: int = Field(20000, ge=0)  # pool texts that near-duplicate checks compare against
    subtopics: int = Field(8, ge=0, le=20)  # sub-topics per class drawn from the LLM for diversity; 0: none
    # Real pool texts (unlabeled, any class) shown in each generation request as examples of form; 0: none.
    # 0 by default: on news (1.5B model) the texts written with 3 trained tfidf-lr no better than before (0.458
    # vs 0.471, not side by side) and some came back wrapped in the quote tags (benchmarks/synthetic.md).
    style_examples: int = Field(0, ge=0, le=10)
    subtopic_check: bool = True  # keep a sub-topic only when its embedding is nearest its own class
    consistency_filter: bool = False  # the LLM re-labels each synthetic text; kept when it agrees
    embedding_filter: bool = False  # kept when the text's nearest class prototype (embedding) is its class
    balance: bool = False  # classes asked for the same number are cut to the smallest survivor count
    topup: bool = False
    # Shares of the real labels / the training set; None means 0.5/K and 0.75/K for K classes.
    topup_threshold: float | None = Field(None, gt=0.0, lt=1.0)
    topup_target: float | None = Field(None, gt=0.0, lt=1.0)
    topup_max_per_round: int = Field(50, ge=1)


class ArgillaConfig(_Section):
    """Human review in Argilla. The API key is read from the environment only."""

    api_url: str | None = None  # None: $ARGILLA_API_URL, else http://localhost:6900
    api_url_env: str = "ARGILLA_API_URL"
    api_key_env: str = "ARGILLA_API_KEY"
    workspace: str = "synthloop"
    dataset: str | None = None  # None: the task's name
    # Existing users to add to the workspace; missing ones are created with $ARGILLA_ANNOTATOR_PASSWORD.
    annotators: list[str] = Field(default_factory=list)
    # Submitted responses a record needs before its label is taken (Argilla's task distribution).
    min_submitted: int = Field(1, ge=1)
    chunk_size: int = Field(100, ge=1, le=500)
    retries: int = Field(3, ge=0)  # per chunk, after the SDK's own connection retries
    retry_wait: float = Field(2.0, ge=0.0)  # seconds, doubled after each try
    timeout: float = Field(60.0, gt=0)
    # A guess less sure than this is shown as a hint, not pre-selected: a reviewer who presses Enter on a
    # coin flip stores it. benchmarks/suggest.md: on the SMS sample, 0.7 let 13 wrong labels of 300 in (93% of
    # what it pre-selected was wrong), 0.8 none.
    suggest_min_confidence: float = Field(0.8, ge=0.0, le=1.0)
    # Records waiting for reviewers, at most (None: no cap). A round tops the queue up to it with the most
    # uncertain examples and withdraws the records the model has become this sure of (withdraw_confidence).
    max_pending: int | None = Field(None, ge=1)
    withdraw_confidence: float = Field(0.9, gt=0.0, le=1.0)


class RouterConfig(_Section):
    """The hybrid labeler: LLM labels first, the doubtful ones to human reviewers."""

    # LLM answers less sure than this go to humans.
    llm_min_confidence: float = Field(0.8, ge=0.0, le=1.0)
    # A model at least this sure that disagrees with the LLM sends the example to humans.
    model_confident: float = Field(0.9, ge=0.0, le=1.0)


class StoreConfig(_Section):
    """Where the store lives. None: $SYNTHLOOP_DB_URL, else SQLite in .synthloop. No password here (this file is
    often committed): put it in $PGPASSWORD, or the whole URL in $SYNTHLOOP_DB_URL."""

    url: str | None = None  # e.g. postgresql://synthloop@db.internal:5432/synthloop


class LimitsConfig(_Section):
    """Bounds on what one input may cost."""

    # Characters of a text that the model's featurizer and LLM prompts see; the store keeps the whole text.
    # (synthloop.textcap.DEFAULT_MAX_TEXT_CHARS says why 10,000.) A model records the cap it was trained with.
    max_text_chars: int = Field(DEFAULT_MAX_TEXT_CHARS, ge=100)


class Config(_Section):
    task: TaskSpec
    model: ModelConfig = Field(default_factory=ModelConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    argilla: ArgillaConfig = Field(default_factory=ArgillaConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    def dump(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))


def load_config(path: Path) -> Config:
    data = read_toml(path, f"no {CONFIG_FILE} in {path.parent}; run `synthloop init {path.parent} --task TASK.toml` first")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise SynthloopError(format_validation_error(err, str(path), what="config")) from None



def validate_config(data: dict, source: str = "the settings given") -> Config:
    """A Config from plain data (Project.init's settings); a bad value is a SynthloopError naming it."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise SynthloopError(format_validation_error(err, source, what="config")) from None


def check_state(root: Path) -> None:
    """Refuse a project whose store is gone or empty rather than start over silently with an empty one: the
    labels bought so far live in it."""
    state, db = root / STATE_DIR, root / STATE_DIR / "store.db"
    if not state.is_dir():
        raise SynthloopError(f"{state} is missing, and with it the store of this project's labels; restore it from a "
                             f"backup, or `mkdir {state}` to start this project over with an empty store")
    # (A missing store.db is not refused: a project whose store is a database server has none.)
    if db.exists() and db.stat().st_size == 0:
        raise SynthloopError(f"{db} is empty (0 bytes); restore it from a backup, or move {state} away to start over "
                             "with an empty store")
