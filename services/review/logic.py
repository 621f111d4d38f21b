"""A reviewer's answer as a ReviewedLabel: checked against the task, published, applied to the view.

`make_review` is pure (what a person may submit for a task); `submit_review` is the one handler
both the page and the JSON API call: check, send keyed by call_id, apply what was sent.
"""
from __future__ import annotations

from typing import Optional, Protocol

from services.common.contracts import ReviewedLabel, ReviewVerdict
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


def checked_label(task: TaskSpec, label: Optional[str]) -> str:
    """The label as the task spells it: one of a classification task's labels (any case), or an
    extraction task's JSON object with the task's fields (normalised)."""
    text = (label or "").strip()
    if not text:
        raise ReviewRefused("choose a label (or mark the item 'not in the label set' or 'skip')")
    if task.kind == "classification":
        by_lower = {name.lower(): name for name in task.labels}
        if text.lower() not in by_lower:
            raise ReviewRefused(f"{text[:80]!r} is not one of the {len(task.labels)} labels of task {task.name}")
        return by_lower[text.lower()]
    try:
        return task.parse_output(text)
    except ParseFailure as exc:
        raise ReviewRefused(f"not an answer of task {task.name}: {exc}") from None


def make_review(task: TaskSpec, call_id: str, verdict: str, label: Optional[str], note: Optional[str],
                reviewer: str, note_max_chars: int = 2000) -> ReviewedLabel:
    if verdict not in VERDICTS:
        raise ReviewRefused(f"verdict {verdict[:40]!r}: expected one of {', '.join(VERDICTS)}")
    note = (note or "").strip() or None
    if note is not None and len(note) > note_max_chars:
        raise ReviewRefused(f"the note has {len(note)} characters; at most {note_max_chars}")
    return ReviewedLabel(call_id=call_id, task=task.name, verdict=verdict,
                         label=checked_label(task, label) if verdict == "label" else None,
                         reviewer=reviewer, note=note)


async def submit_review(view: ReviewView, publisher: Publisher, task: TaskSpec, call_id: str, verdict: str,
                        label: Optional[str], note: Optional[str], reviewer: str,
                        note_max_chars: int = 2000) -> ReviewedLabel:
    """Publish a person's review of a call the page knows; a second one for the call replaces it."""
    if view.item(task.name, call_id) is None:
        raise ReviewRefused(f"call {call_id[:80]!r} is not an item of task {task.name} on this page", status=404)
    review = make_review(task, call_id, verdict, label, note, reviewer, note_max_chars)
    partition, offset = await publisher.publish(review)
    view.apply_review(review, partition=partition, offset=offset)
    return review
