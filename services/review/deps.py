"""FastAPI dependencies of the review page: its state, the signed-in reviewer, the task in the path."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, Optional

from fastapi import Depends, Header, Request

from services.common.tasks import TaskRegistry, TaskSpec
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
        """Reviewed holdout items the gate still needs before this task can graduate."""
        reviewed = sum(1 for e in self.view.dataset(task).examples if e.split == "holdout" and e.reviewed)
        return max(0, self.settings.controller.min_holdout - reviewed)

    def queue(self, task: str, limit: Optional[int] = None):
        curator = self.settings.curator
        return self.view.queue(task, limit=limit or curator.review_limit, low_confidence=curator.review_low_confidence)


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
