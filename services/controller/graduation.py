"""Starting a graduation: when does a task on the frontier get its first model, and who says go?

Per task, `graduation` in config/tasks.yaml: `auto` (the controller asks the trainer itself),
`approve` (the default: the task is marked ready and waits for `graduate approve TASK` or the
review page's button) or `off`. A task is ready when the profiler recommends it and its
reviewed holdout reaches the gate's minimum (`services.curator.readiness`). A task demoted for
drift is `collecting` until what was captured since the demotion is enough to learn the new
traffic from (`drift_readiness`), then the controller asks for the retrain itself (kind `drift`,
whatever the policy but `off`). Each task's state —
off, frontier, collecting_reviews, ready, training, shadow, small, collecting — is derived here
from what the topics say (pure), and the controller writes it on the routing history whenever it
changes, with its reason and evidence.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Optional

from services.common.contracts import ModelRegistered, RetrainRequest, RoutingDecision
from services.curator.readiness import DriftReadiness, Readiness

Policy = Literal["auto", "approve", "off"]
State = Literal["off", "frontier", "collecting_reviews", "ready", "training", "shadow", "small", "collecting"]
TRAINING_TIMEOUT = timedelta(hours=6)  # a request unanswered this long was refused or lost (see the dead letters)


@dataclass(frozen=True)
class Signal:
    """What the controller's periodic look at the data saw for one task."""

    task: str
    recommended: bool
    why_not: tuple[str, ...]  # the profiler's failing traits
    readiness: Readiness
    drift: Optional[DriftReadiness] = None  # a task demoted for drift: what was captured since


@dataclass(frozen=True)
class Step:
    state: State
    reason: str
    request: bool = False  # ask the trainer for a model now
    kind: str = "first"  # of that request: first, or drift (the retrain after a demotion)


def pending_request(request: Optional[RetrainRequest], latest_model: Optional[ModelRegistered],
                    now: datetime) -> Optional[RetrainRequest]:
    """The task's last request when no model has answered it yet and it is not stale."""
    if request is None or now - request.ts > TRAINING_TIMEOUT:
        return None
    if latest_model is not None and latest_model.ts >= request.ts:
        return None
    return request


def step(policy: Policy, current: Optional[RoutingDecision], signal: Optional[Signal],
         pending: Optional[RetrainRequest], last_request_reviews: Optional[int], demoted: bool = False) -> Step:
    """The task's graduation state and whether to request its first model (pure).

    `last_request_reviews`: the reviewed holdout count when the last first-model request was
    made; a refused or failed graduation is retried only once more reviews have arrived.
    """
    if pending is not None:
        return Step("training", f"training requested ({pending.kind}: {pending.reason}) by {pending.requested_by}")
    if current is not None and current.mode == "small":
        return Step("small", current.reason)
    if current is not None and current.mode == "shadow" and not demoted:
        return Step("shadow", current.reason)
    if policy == "off":
        return Step("off" if current is None or current.mode != "shadow" else "shadow",
                    "graduation: off in config/tasks.yaml")
    if demoted:
        return after_drift(signal, last_request_reviews)
    if signal is None:
        return Step("frontier", "not looked at yet")
    if not signal.recommended:
        return Step("frontier", "the profiler says stay on the frontier (failing: "
                    f"{', '.join(signal.why_not) or '-'})")
    r = signal.readiness
    if not r.ready:
        return Step("collecting_reviews", f"recommended by the profiler; {r.reason}")
    if last_request_reviews is not None and r.reviewed_holdout <= last_request_reviews:
        return Step("ready", f"a model trained on {last_request_reviews} reviewed holdout items did not graduate; "
                    "waiting for more reviews (or graduate approve)")
    if policy == "auto":
        return Step("training", f"recommended by the profiler and {r.reason}: first model requested", request=True)
    return Step("ready", f"recommended by the profiler and {r.reason}: waiting for `graduate approve "
                f"{signal.task}` or the review page's button")


def after_drift(signal: Optional[Signal], last_request_reviews: Optional[int]) -> Step:
    """A task demoted for drift: collect data since the demotion, then ask for the retrain (pure)."""
    drift = signal.drift if signal is not None else None
    if drift is None:
        return Step("collecting", "waiting for data since the drift: not looked at yet")
    if not drift.ready:
        return Step("collecting", f"waiting for data since the drift: {drift.reason}")
    if last_request_reviews is not None and signal.readiness.reviewed_holdout <= last_request_reviews:
        return Step("collecting", f"a model trained on {last_request_reviews} reviewed holdout items did not "
                    f"graduate; waiting for more reviews since the drift ({drift.reason})")
    return Step("training", f"enough data since the drift ({drift.reason}): retrain requested", request=True,
                kind="drift")
