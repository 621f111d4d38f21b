"""What the shadow decides, as plain functions: which captured calls run on which small model,
how a batch is split into Triton requests, and the ShadowResult each answer becomes.

The routing state is the compacted `routing.decisions` topic (the current decision per task)
plus `models` (a decision may name only a version; the registration names the Triton model).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.contracts import CapturedCall, ShadowResult
from services.common.routing_state import RoutingState
from services.common.triton import SmallAnswer


@dataclass(frozen=True)
class ShadowPolicy:
    """Which traffic is shadowed besides `shadow` mode: a sample of `small` mode's frontier calls.

    In `small` mode the frontier still answers sampled calls (unbiased: a fixed share of all
    traffic) and fallbacks (biased: only calls the small model was unsure of). Only the sampled
    ones are shadowed by default, so small-mode accuracy is measured on representative traffic.
    """

    small_mode_sources: frozenset[str] = frozenset({"sampled"})
    small_mode_sample_rate: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.small_mode_sample_rate <= 1.0:
            raise ValueError(f"small_mode_sample_rate must be in [0, 1], got {self.small_mode_sample_rate}")


@dataclass(frozen=True)
class ShadowTarget:
    """The model a call runs on: graduate's version name and where Triton serves it."""

    task: str
    model_version: str
    triton_model: str
    triton_version: str | None
    fields: tuple[str, ...] = ()  # an extraction model's fields, in its order (asks Triton for FIELD_CONFIDENCE)


def triton_version(model_version: str) -> str | None:
    """Triton's numeric version for a graduate version ("3" → "3"); anything else → latest."""
    return model_version if model_version.isdigit() else None


def sampled_in(call_id: str, rate: float) -> bool:
    """A stable per-call coin (the same call is sampled on every replay)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    bucket = int.from_bytes(hashlib.blake2b(call_id.encode(), digest_size=8).digest(), "big") / 2**64
    return bucket < rate


def select_target(call: CapturedCall, state: RoutingState, policy: ShadowPolicy) -> ShadowTarget | None:
    """The model to shadow `call` with, or None when the call is not shadowed.

    Shadowed: a parsed frontier answer of a task in `shadow` mode, or of a task in `small` mode
    when the call's source is one the policy samples; the decision must name a model version
    whose Triton model is known (from the decision or the model's registration).
    """
    if not call.parse_ok or call.output is None:
        return None
    decision = state.decisions.get(call.task)
    if decision is None or decision.model_version is None:
        return None
    if decision.mode == "small":
        if call.source not in policy.small_mode_sources or not sampled_in(call.call_id, policy.small_mode_sample_rate):
            return None
    elif decision.mode != "shadow":
        return None
    triton_model = decision.triton_model
    if triton_model is None:
        model = state.models.get((call.task, decision.model_version))
        if model is None:
            return None
        triton_model = model.triton_model
    return ShadowTarget(call.task, decision.model_version, triton_model, triton_version(decision.model_version),
                        state.fields_for(call.task, decision.model_version))


def plan_requests(targets: Sequence[ShadowTarget | None], max_batch: int) -> list[tuple[ShadowTarget, list[int]]]:
    """Group the positions of a batch by target and cut each group into Triton requests of at
    most `max_batch` texts; positions with no target are left out. Order within a group is kept."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    groups: dict[ShadowTarget, list[int]] = {}
    for i, target in enumerate(targets):
        if target is not None:
            groups.setdefault(target, []).append(i)
    return [(target, positions[start:start + max_batch])
            for target, positions in groups.items()
            for start in range(0, len(positions), max_batch)]


def shadow_result(call: CapturedCall, target: ShadowTarget, answer: SmallAnswer, latency_ms: float) -> ShadowResult:
    """The small model's answer on a captured call; latency is the round trip of its request."""
    return ShadowResult(call_id=call.call_id, task=call.task, model_version=target.model_version,
                        output=answer.label, confidence=answer.confidence, latency_ms=latency_ms,
                        input=call.input, frontier_output=call.output, source=call.source,
                        field_confidence=answer.field_confidence)


def backoff_delays(initial_s: float = 0.5, factor: float = 2.0, max_s: float = 15.0):
    """Delays between retries of an unavailable Triton: exponential, capped, forever."""
    delay = initial_s
    while True:
        yield delay
        delay = min(delay * factor, max_s)
