"""Task specs (config/tasks.yaml): what each routed task is, how to read its input and answer.

`classification` parses the frontier's answer into one label of a fixed set; `extraction`
(a JSON object with known fields) has its seam here; `freeform` is captured but never graduated.
"""
from __future__ import annotations

import functools

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

TaskKind = Literal["classification", "extraction", "freeform"]
Graduation = Literal["auto", "approve", "off"]  # who starts a task's first training: the controller, a person, none


class ParseFailure(ValueError):
    """The frontier's answer is not a valid output for the task (never a training label)."""


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    source: Literal["last_user_message", "field"] = Field("last_user_message", alias="from")
    field: Optional[str] = None

    @model_validator(mode="after")
    def _field_named(self) -> "InputSpec":
        if self.source == "field" and not self.field:
            raise ValueError("input.from=field needs input.field")
        return self


class Prices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    frontier_input_per_mtok: float = 2.5
    frontier_output_per_mtok: float = 10.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.frontier_input_per_mtok + completion_tokens * self.frontier_output_per_mtok) / 1e6


class RedactionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    frontier_sees_original: bool = True
    patterns: dict[str, str] = Field(default_factory=dict, description="extra name -> regex")
    captured: Literal["redact", "refuse"] = Field(
        "redact", description="what the curator does with a captured record that still holds PII: "
                              "redact it again, or refuse it (dead letter)")


class FieldSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    type: Literal["string", "integer"] = "string"
    required: bool = False


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    kind: TaskKind
    description: str = ""
    labels: tuple[str, ...] = ()
    labels_file: Optional[str] = None
    # The answer the frontier gives when no label fits ("other", "oos"): captured as such, never a
    # label of the small model; the trainer learns from it when to fall back (abstain).
    out_of_scope_label: Optional[str] = None
    fields: tuple[FieldSpec, ...] = ()
    input: InputSpec = Field(default_factory=InputSpec)
    system_prompt: str = ""
    prices: Prices = Field(default_factory=Prices)
    redaction: RedactionSpec = Field(default_factory=RedactionSpec)
    graduation: Graduation = "approve"

    @model_validator(mode="after")
    def _kind_needs(self) -> "TaskSpec":
        if self.kind == "classification" and len(self.labels) < 2:
            raise ValueError(f"task {self.name}: a classification task needs at least two labels")
        if self.kind == "extraction" and not self.fields:
            raise ValueError(f"task {self.name}: an extraction task needs fields")
        if self.out_of_scope_label is not None and (self.kind != "classification"
                                                   or self.out_of_scope_label in self.labels):
            raise ValueError(f"task {self.name}: out_of_scope_label must be a classification task's answer "
                             f"outside its labels")
        return self

    @property
    def answers(self) -> tuple[str, ...]:
        """What a frontier answer may be: the labels, and the out-of-scope label where the task has one."""
        return self.labels + ((self.out_of_scope_label,) if self.out_of_scope_label else ())

    @property
    def graduatable(self) -> bool:
        return self.kind != "freeform"

    def prompt(self) -> str:
        return self.system_prompt.replace("{labels}", ", ".join(self.labels))

    @functools.cached_property
    def prompt_chars(self) -> int:
        """len(prompt()), computed once (the router's per-request saved-cost estimate uses it)."""
        return len(self.prompt())

    def extract_input(self, messages: list[dict[str, Any]]) -> str:
        """The model input from a chat request's messages; ValueError says what is missing."""
        users = [m for m in messages if m.get("role") == "user"]
        if not users:
            raise ValueError("messages: no message with role 'user'")
        content = users[-1].get("content")
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise ValueError("messages: the last user message has no text content")
        if self.input.source == "field":
            try:
                value = json.loads(content)[self.input.field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"messages: the last user message is not JSON with field {self.input.field!r}") from None
            content = value if isinstance(value, str) else json.dumps(value)
        if not content.strip():
            raise ValueError("messages: the model input is empty")
        return content

    def parse_output(self, raw: str) -> str:
        """The frontier's answer as a task output; ParseFailure when it is not one."""
        if self.kind == "classification":
            return parse_label(raw, self.answers)
        if self.kind == "extraction":
            return parse_fields(raw, self.fields)
        return raw


_LABEL_STRIP = re.compile(r"^[\s\"'`*.:]+|[\s\"'`*.:]+$")


@lru_cache(maxsize=256)
def _by_lower(labels: tuple[str, ...]) -> dict[str, str]:
    """A label set by its lower-cased labels, built once per set (parsing runs once per captured call)."""
    return {label.lower(): label for label in labels}


def parse_label(raw: str, labels: tuple[str, ...]) -> str:
    text = _LABEL_STRIP.sub("", raw or "")
    if text.lower().startswith("label:"):
        text = _LABEL_STRIP.sub("", text[6:])
    label = _by_lower(labels).get(text.lower())
    if label is None:
        raise ParseFailure(f"answer {raw[:80]!r} is not one of the task's {len(labels)} labels")
    return label


def parse_fields(raw: str, fields: tuple[FieldSpec, ...]) -> str:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ParseFailure(f"answer is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ParseFailure("answer is not a JSON object")
    names = {f.name for f in fields}
    unknown = set(obj) - names
    if unknown:
        raise ParseFailure(f"answer has fields outside the spec: {sorted(unknown)}")
    missing = [f.name for f in fields if f.required and obj.get(f.name) in (None, "")]
    if missing:
        raise ParseFailure(f"answer lacks required fields: {missing}")
    return json.dumps({f.name: obj.get(f.name) for f in fields}, sort_keys=True)


class TaskRegistry(BaseModel):
    model_config = ConfigDict(frozen=True)
    tasks: dict[str, TaskSpec]

    def get(self, name: str) -> TaskSpec:
        try:
            return self.tasks[name]
        except KeyError:
            raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(self.tasks))}") from None


def load_tasks(path: Path) -> TaskRegistry:
    """Read the task specs; label files are resolved against the repository root."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    root = Path(path).resolve().parent.parent
    tasks = {}
    for entry in raw.get("tasks", []):
        entry = dict(entry)
        labels_file = entry.get("labels_file")
        if labels_file and not entry.get("labels"):
            entry["labels"] = tuple(json.loads((root / labels_file).read_text()))
        spec = TaskSpec.model_validate(entry)
        if spec.name in tasks:
            raise ValueError(f"{path}: task {spec.name} is declared twice")
        tasks[spec.name] = spec
    return TaskRegistry(tasks=tasks)
