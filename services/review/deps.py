"""FastAPI dependencies of the review page: its state, the signed-in reviewer, the task in the path."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Callable, Optional

from fastapi import Depends, Header, Request

from services.common.tasks import TaskRegistry, TaskSpec
from services.curator.logic import ts_ms
from services.review.auth import COOKIE, AuthError, Reviewer, Sessions, authenticate
from services.review.logic import Publisher
from services.review.settings import ReviewSettings
from services.review.view import ReviewView
from services.router.keys import KeyStore


class PageError(Exception):
    """A request the page cannot answer (unknown task, unknown item); the text says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ReviewState:
    settings: ReviewSettings
    tasks: TaskRegistry
    view: ReviewView
    publisher: Publisher
    keys: KeyStore
    sessions: Sessions
    is_ready: Callable[[], bool]
    follower_status: Callable[[], dict]

    def reviews_needed(self, task: str) -> int:
        """Reviewed holdout items the gate still needs before this task can graduate; for a task
        collecting data after a drift, reviewed items captured since the demotion."""
        drift = self.drift_target(task)
        since, needed = drift if drift else (None, self.settings.controller.min_holdout)
        reviewed = sum(1 for e in self.view.dataset(task).examples
                       if e.split == "holdout" and e.reviewed and (since is None or e.ts_ms >= since))
        return max(0, needed - reviewed)

    def drift_target(self, task: str) -> Optional[tuple[int, int]]:
        """(since when, in epoch ms; how many reviewed items since then) while the task is demoted for
        drift: the controller's latest `collecting` note says how many (services/curator/readiness.py)."""
        t = self.view.task(task)
        if t.decision is None or _evidence(t.decision).get("gate") != "watch":
            return None
        since = ts_ms(t.decision.ts)
        controller = self.settings.controller
        needed = controller.min_shadow_reviewed if controller.drift_min_reviewed is None else controller.drift_min_reviewed
        for note in reversed(t.history):
            if note.ts < t.decision.ts:
                break
            drift = _evidence(note).get("drift")
            if _evidence(note).get("state") == "collecting" and isinstance(drift, dict):
                return int(drift.get("since_ms", since)), int(drift.get("min_reviewed_since", needed))
        return since, needed

    def queue(self, task: str, limit: Optional[int] = None):
        curator, drift = self.settings.curator, self.drift_target(task)
        return self.view.queue(task, limit=limit or curator.review_limit, low_confidence=curator.review_low_confidence,
                               since_ms=drift[0] if drift else None)


def _evidence(decision) -> dict:
    try:
        value = json.loads(decision.evidence or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def get_state(request: Request) -> ReviewState:
    return request.app.state.review


StateDep = Annotated[ReviewState, Depends(get_state)]


def get_reviewer(request: Request, state: StateDep,
                 authorization: Annotated[Optional[str], Header()] = None) -> Reviewer:
    return authenticate(state.keys, state.sessions, authorization, request.cookies.get(COOKIE))


ReviewerDep = Annotated[Reviewer, Depends(get_reviewer)]


def reviewable_task(state: ReviewState, reviewer: Reviewer, name: str) -> TaskSpec:
    """A task this key may review: 404 unknown or free-form (never graduated), 403 not for this key."""
    spec = state.tasks.tasks.get(name)
    if spec is None or not spec.graduatable:
        known = ", ".join(sorted(n for n, s in state.tasks.tasks.items() if s.graduatable))
        raise PageError(404, f"no reviewable task {name[:80]!r}; reviewable: {known or 'none'}")
    if not reviewer.key.may_use(name):
        raise AuthError(403, f"key {reviewer.name!r} may not review task {name!r}")
    return spec


def get_task(task: str, state: StateDep, reviewer: ReviewerDep) -> TaskSpec:
    return reviewable_task(state, reviewer, task)


TaskDep = Annotated[TaskSpec, Depends(get_task)]
