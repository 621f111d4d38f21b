"""A reviewer's answer as a ReviewedLabel: checked against the task, published, applied to the view.

`make_review` is pure (what a person may submit for a task); `submit_review` is the one handler
both the page and the JSON API call: check, send keyed by call_id, apply what was sent.

An extraction task is reviewed field by field: the reviewer corrects the values of the task's
fields (`fields`, name -> value; an empty value is null) and the label published is the corrected
JSON object in the task's canonical form (every field of the spec, keys sorted); a name that is
not a field of the task is refused. A whole JSON object as `label` is still taken.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional, Protocol

from services.common.contracts import RetrainRequest, ReviewedLabel, ReviewVerdict
from services.common.normalize import hash_of_input
from services.common.tasks import ParseFailure, TaskSpec
from services.review.view import ReviewView

VERDICTS: tuple[ReviewVerdict, ...] = ("label", "not_in_label_set", "skip")


class ReviewRefused(ValueError):
    """A submission that is not a review of this task; the text says why (HTTP 422 or 404)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class Publisher(Protocol):
    async def publish(self, review: ReviewedLabel) -> tuple[int, int]:
        """Send the review keyed by call_id; the (partition, offset) it was written at."""

    async def request_model(self, request: RetrainRequest) -> None:
        """Send a person's approval of a graduation (a retrain request keyed by task)."""


def checked_label(task: TaskSpec, label: Optional[str]) -> str:
    """The label as the task spells it: one of a classification task's labels (any case), or an
    extraction task's JSON object with the task's fields (normalised)."""
    text = (label or "").strip()
    if not text:
        raise ReviewRefused("choose a label (or mark the item 'not in the label set' or 'skip')")
    if task.kind == "classification":
        by_lower = {name.lower(): name for name in task.answers}  # the out-of-scope label is an answer too
        if text.lower() not in by_lower:
            raise ReviewRefused(f"{text[:80]!r} is not one of the {len(task.labels)} labels of task {task.name}")
        return by_lower[text.lower()]
    try:
        return task.parse_output(text)
    except ParseFailure as exc:
        raise ReviewRefused(f"not an answer of task {task.name}: {exc}") from None


FIELD_VALUE_MAX_CHARS = 500


def label_from_fields(task: TaskSpec, values: Mapping[str, Any]) -> str:
    """The corrected JSON answer of an extraction task from its fields' values (name -> value;
    None or blank is null), canonical (every field of the spec, keys sorted). Names outside the
    task's fields, over-long values and a non-integer value of an integer field are refused."""
    if task.kind != "extraction":
        raise ReviewRefused(f"task {task.name} is {task.kind}: review it with a label, not fields")
    spec = {f.name: f for f in task.fields}
    unknown = sorted(str(k) for k in values if k not in spec)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise ReviewRefused(f"not a field of task {task.name}: {shown}; its fields are {', '.join(spec)}")
    obj: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, bool) or (value is not None and not isinstance(value, (str, int))):
            raise ReviewRefused(f"field {name}: a value is text (or empty for none), not {type(value).__name__}")
        text = " ".join(str(value).split()) if value is not None else ""
        if len(text) > FIELD_VALUE_MAX_CHARS:
            raise ReviewRefused(f"field {name}: {len(text)} characters; at most {FIELD_VALUE_MAX_CHARS}")
        if not text:
            obj[name] = None
        elif spec[name].type == "integer":
            try:
                obj[name] = int(text)
            except ValueError:
                raise ReviewRefused(f"field {name}: {text[:40]!r} is not a whole number") from None
        else:
            obj[name] = text
    return checked_label(task, json.dumps(obj))


def make_review(task: TaskSpec, call_id: str, verdict: str, label: Optional[str], note: Optional[str],
                reviewer: str, note_max_chars: int = 2000,
                fields: Optional[Mapping[str, Any]] = None) -> ReviewedLabel:
    """The review a person submits: a label (or, for an extraction task, the fields' values), or a
    verdict without one."""
    if verdict not in VERDICTS:
        raise ReviewRefused(f"verdict {verdict[:40]!r}: expected one of {', '.join(VERDICTS)}")
    note = (note or "").strip() or None
    if note is not None and len(note) > note_max_chars:
        raise ReviewRefused(f"the note has {len(note)} characters; at most {note_max_chars}")
    answer = None
    if verdict == "label":
        if fields is not None and (label or "").strip():
            raise ReviewRefused("give the answer once: as the fields' values or as a label, not both")
        answer = label_from_fields(task, fields) if fields is not None else checked_label(task, label)
    return ReviewedLabel(call_id=call_id, task=task.name, verdict=verdict, label=answer, reviewer=reviewer, note=note)


def input_digest(task: TaskSpec, item) -> Optional[str]:
    """The reviewed call's input hash as the curator files it, so the review applies to the input
    whichever of its calls was reviewed; an item known only by its earlier review keeps that one's. A
    disputed train label carries the hash the trainer read from the snapshot."""
    if item.normalised_hash:
        return item.normalised_hash
    if item.input:
        return hash_of_input(task, item.input)
    return item.review.normalised_hash if item.review is not None else None


async def submit_review(view: ReviewView, publisher: Publisher, task: TaskSpec, call_id: str, verdict: str,
                        label: Optional[str], note: Optional[str], reviewer: str,
                        note_max_chars: int = 2000, fields: Optional[Mapping[str, Any]] = None) -> ReviewedLabel:
    """Publish a person's review of a call the page knows; a second one for the call replaces it."""
    item = view.item(task.name, call_id)
    if item is None:
        raise ReviewRefused(f"call {call_id[:80]!r} is not an item of task {task.name} on this page", status=404)
    review = make_review(task, call_id, verdict, label, note, reviewer, note_max_chars, fields)
    review = review.model_copy(update={"normalised_hash": input_digest(task, item)})
    partition, offset = await publisher.publish(review)
    view.apply_review(review, partition=partition, offset=offset)
    return review
