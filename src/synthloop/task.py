"""The task: what is classified, the labels, their descriptions and a few examples."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthloop.errors import SynthloopError

# The LLM labeler's answer for "fits no label" (labelers/llm.py): a label of that name could not be told apart.
RESERVED_LABELS = ("abstain",)
# A task or config file is a few kilobytes; anything this big is the wrong file.
MAX_TOML_BYTES = 1_000_000


class Label(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    examples: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("label name is empty; give every [[task.labels]] a non-empty name")
        if value.lower() in RESERVED_LABELS:
            raise ValueError(f"{value!r} is the LLM labeler's answer for a text that fits no label; rename this label")
        return value


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = Field(min_length=1)
    labels: list[Label]

    @field_validator("description")
    @classmethod
    def _description_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the task description is blank; say in a sentence what is classified")
        return value.strip()

    @model_validator(mode="after")
    def _labels_valid(self) -> TaskSpec:
        if len(self.labels) < 2:
            raise ValueError(f"a task needs two or more labels, got {len(self.labels)}; add [[task.labels]] entries")
        seen: set[str] = set()
        for label in self.labels:
            if label.name in seen:
                raise ValueError(f"duplicate label {label.name!r}; label names must be unique")
            seen.add(label.name)
        return self

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def examples(self) -> list[tuple[str, str]]:
        """(text, label) pairs from the task file, used for the cold-start model."""
        return [(text, label.name) for label in self.labels for text in label.examples if text.strip()]

    def render(self) -> str:
        """The task as prompt-ready text: description, then one line per label."""
        lines = [self.description, "", "Labels:"]
        for label in self.labels:
            lines.append(f"- {label.name}: {label.description}".rstrip(": "))
        return "\n".join(lines)


def format_validation_error(err: ValidationError, source: str, prefix: str = "", what: str = "task") -> str:
    parts = []
    for e in err.errors():
        where = prefix + ".".join(str(p) for p in e["loc"]) if e["loc"] else prefix.rstrip(".") or "task"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {e['loc'][-1]!r}; remove it or check its spelling"
        elif e["type"] == "string_pattern_mismatch":
            msg = f"{e['input']!r} is not a slug; use lowercase letters, digits, '-' and '_'"
        parts.append(f"  {where}: {msg}")
    return f"{source} is not a valid {what}:\n" + "\n".join(parts)


def parse_task(data: dict, source: str = "task") -> TaskSpec:
    """Validate a parsed TOML document whose [task] table holds the task."""
    if "task" not in data:
        raise SynthloopError(f"{source} has no [task] table; see the task format in docs/cli.md (The task format)")
    try:
        return TaskSpec.model_validate(data["task"])
    except ValidationError as err:
        raise SynthloopError(format_validation_error(err, source, prefix="task.")) from None


def read_toml(path: Path, missing: str) -> dict:
    """A TOML file's contents; `missing` is the error when there is no such file."""
    if not path.is_file():
        raise SynthloopError(missing)
    size = path.stat().st_size
    if size > MAX_TOML_BYTES:
        raise SynthloopError(f"{path} is {size:,} bytes; a task or config file is a few kilobytes (at most "
                             f"{MAX_TOML_BYTES:,}): is it the right file? Put data in a CSV/JSONL and import it")
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not a TOML error at line 1, col 1.
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SynthloopError(f"{path} is not valid UTF-8 TOML: {err}") from None


def load_task(path: str | Path) -> TaskSpec:
    path = Path(path)
    data = read_toml(path, f"task file {path} does not exist; pass the path of a task.toml")
    return parse_task(data, str(path))
