"""What the controller decides on each event, as plain objects (no broker): the service layer.

`Controller` holds what the controller knows — each task's current decision as the routing
topic says it (plus its own decisions not yet read back), the registered models, the judge's
statistics, the watch windows — and turns an event into `Effects`: decisions for the routing
topic and the history, refusals for the history alone, retrain requests. app.py replays the
compacted topics into it, feeds it events and sends what it returns.

Idempotent under at-least-once delivery: a version gets one offline verdict (the history
remembers it across restarts), a shadow refusal is written once per shadow period and set of
failing checks, and a watch episode (one `small` decision) demotes at most once.

After a demotion the task collects data (graduation.py, `collecting`); the retrain request comes
from the periodic look once enough was captured since, and the version that answers it is held,
in shadow and after cutover, to the fallback rate its holdout predicts for the label mix of the
traffic since the drift (`traffic_prediction`), not for the holdout's mostly older mix.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from services.common.contracts import (CapturedCall, Mode, ModelRegistered, RetrainRequest, RouterOutcome,
                                       RoutingDecision, ShadowStats, utcnow)
from services.controller.gate import GateResult, evaluate_offline, evaluate_shadow, stats_counts, traffic_prediction
from services.controller.graduation import Policy, Signal, Step, pending_request, step
from services.controller.settings import ControllerSettings
from services.controller.watch import Window, assess, observe_outcome, observe_sampled, promise_of, same_output

MAX_UNPAIRED_SAMPLES = 10_000


@dataclass
class Effects:
    decisions: list[RoutingDecision] = field(default_factory=list)  # routing topic + history
    refusals: list[RoutingDecision] = field(default_factory=list)  # history only: the mode stays
    retrains: list[RetrainRequest] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.decisions or self.refusals or self.retrains)


def merged(a: Effects, b: Effects) -> Effects:
    return Effects(a.decisions + b.decisions, a.refusals + b.refusals, a.retrains + b.retrains)


def evidence_of(decision: RoutingDecision) -> dict[str, Any]:
    try:
        value = json.loads(decision.evidence or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def dumps(evidence: dict[str, Any]) -> str:
    return json.dumps(evidence, separators=(",", ":"), sort_keys=True, default=str)


class Controller:
    def __init__(self, settings: ControllerSettings, policies: Optional[dict[str, Policy]] = None) -> None:
        self.settings = settings
        self.policies: dict[str, Policy] = dict(policies or {})  # graduation per task (config/tasks.yaml)
        self.requests: dict[str, RetrainRequest] = {}  # the newest retrain request per task
        self.signals: dict[str, Signal] = {}  # the newest look at each task's data
        self.noted_states: dict[str, str] = {}  # the graduation state last written on the history
        self.first_request_reviews: dict[str, int] = {}  # reviewed holdout items when a first model was asked for
        self.refused_requests: dict[str, str] = {}  # request_id -> why the trainer would not train on it
        self.routed: dict[str, RoutingDecision] = {}
        self.unread: dict[str, list[RoutingDecision]] = {}  # ours, sent, not yet read back
        self.models: dict[tuple[str, str], ModelRegistered] = {}
        self.stats: dict[tuple[str, str], ShadowStats] = {}
        self.offline_verdicts: set[tuple[str, str]] = set()
        self.noted_refusals: set[tuple[str, str]] = set()
        self.windows: dict[str, Window] = {}
        self.sampled_small: OrderedDict[str, tuple[str, Optional[str], float]] = OrderedDict()
        self.sampled_frontier: OrderedDict[str, tuple[str, Optional[str]]] = OrderedDict()

    # --- what the topics say --------------------------------------------------------------

    def current(self, task: str) -> Optional[RoutingDecision]:
        unread = self.unread.get(task)
        return unread[-1] if unread else self.routed.get(task)

    def read_decision(self, decision: RoutingDecision) -> None:
        """A record of the compacted routing topic, in offset order (ours or a person's)."""
        unread = self.unread.get(decision.task, [])
        ids = [d.decision_id for d in unread]
        if decision.decision_id in ids:
            del unread[:ids.index(decision.decision_id) + 1]
        self.routed[decision.task] = decision
        self.read_history(decision)

    def read_history(self, decision: RoutingDecision) -> None:
        """A record of the history: remember which verdicts were already given."""
        ev = evidence_of(decision)
        if ev.get("gate") == "offline" and ev.get("candidate"):
            self.offline_verdicts.add((decision.task, str(ev["candidate"])))
        if ev.get("gate") == "shadow" and ev.get("verdict") == "refused":
            self.noted_refusals.add((str(ev.get("episode")), str(ev.get("signature"))))
        if ev.get("gate") == "graduation" and ev.get("state"):
            self.noted_states[decision.task] = state_key(ev)
            if ev.get("requested") and isinstance(ev.get("reviewed_holdout"), int):
                self.first_request_reviews[decision.task] = ev["reviewed_holdout"]

    def read_request(self, request: RetrainRequest) -> None:
        """A record of the retrain requests topic (the controller's own, a person's approval)."""
        held = self.requests.get(request.task)
        if held is None or request.ts >= held.ts:
            self.requests[request.task] = request

    def read_model(self, model: ModelRegistered) -> None:
        self.models[(model.task, model.version)] = model

    def read_stats(self, stats: ShadowStats) -> None:
        self.stats[(stats.task, stats.model_version)] = stats

    def tasks(self) -> list[str]:
        return sorted(set(self.routed) | set(self.unread) | {t for t, _ in self.models} | set(self.signals)
                      | set(self.requests) | set(self.policies))

    def latest_model(self, task: str) -> Optional[ModelRegistered]:
        mine = [m for (t, _), m in self.models.items() if t == task]
        return max(mine, key=lambda m: m.ts) if mine else None

    # --- the gate ---------------------------------------------------------------------------

    def incumbent(self, current: Optional[RoutingDecision], candidate: str) -> Optional[ModelRegistered]:
        """The model a candidate would replace: the one serving (small) or in shadow, unless it
        was demoted for drift (its holdout figures no longer describe the traffic)."""
        if current is None or current.mode == "frontier" or not current.model_version:
            return None
        if current.model_version == candidate or evidence_of(current).get("gate") == "watch":
            return None
        return self.models.get((current.task, current.model_version))

    def offline(self, model: ModelRegistered) -> GateResult:
        return evaluate_offline(model, self.incumbent(self.current(model.task), model.version), self.settings)

    def shadow(self, task: str, version: str) -> Optional[GateResult]:
        """The shadow gate for `version`, counting from the current shadow period when it is that one."""
        stats, model = self.stats.get((task, version)), self.models.get((task, version))
        if stats is None or model is None:
            return None
        current = self.current(task)
        in_shadow = current is not None and current.mode == "shadow" and current.model_version == version
        baseline = evidence_of(current).get("shadow_baseline") if in_shadow else None
        predicted = current.predicted_fallback_rate if in_shadow else None
        return evaluate_shadow(stats, model, baseline, self.settings, predicted=predicted)

    def on_model(self, model: ModelRegistered) -> Effects:
        self.read_model(model)
        key = (model.task, model.version)
        if key in self.offline_verdicts:
            return Effects()
        self.offline_verdicts.add(key)
        result = self.offline(model)
        if not result.passed:
            return Effects(refusals=[self._refusal(model.task, result.reason, result.as_evidence())])
        evidence = result.as_evidence() | {"shadow_baseline": self._baseline(model.task, model.version)}
        predicted, basis = self._prediction(model)
        if basis:
            evidence["prediction"] = basis
        return Effects(decisions=[self._decide(decision_for(model, "shadow", result.reason, evidence,
                                                           self.settings.decided_by, predicted=predicted))])

    def _prediction(self, model: ModelRegistered) -> tuple[Optional[float], Optional[dict[str, Any]]]:
        """The fallback rate to hold `model` to: after a drift, its holdout's rates per label weighted
        by the traffic since the drift; else None (the model's own prediction)."""
        current, signal = self.current(model.task), self.signals.get(model.task)
        if current is None or evidence_of(current).get("gate") != "watch" or signal is None or signal.drift is None:
            return None, None
        return traffic_prediction(model, signal.drift.answered_since)

    def on_stats(self, stats: ShadowStats) -> Effects:
        self.read_stats(stats)
        current = self.current(stats.task)
        if current is None or current.mode != "shadow" or current.model_version != stats.model_version:
            return Effects()
        result = self.shadow(stats.task, stats.model_version)
        if result is None or result.verdict == "pending":
            return Effects()
        if result.passed:
            model = self.models[(stats.task, stats.model_version)]
            predicted, evidence = promised_fallback(current, model, result)
            return Effects(decisions=[self._decide(decision_for(model, "small", result.reason, evidence,
                                                               self.settings.decided_by, predicted=predicted))])
        signature = ",".join(result.failed)
        note = (current.decision_id, signature)
        if note in self.noted_refusals:
            return Effects()
        self.noted_refusals.add(note)
        evidence = result.as_evidence() | {"episode": current.decision_id, "signature": signature}
        return Effects(refusals=[self._refusal(stats.task, result.reason, evidence)])

    # --- the watch --------------------------------------------------------------------------

    def window(self, current: RoutingDecision) -> Window:
        window = self.windows.get(current.task)
        if window is None or window.promise.episode != current.decision_id:
            model = self.models.get((current.task, current.model_version or ""))
            window = self.windows[current.task] = Window(promise_of(current, model))
        return window

    def on_outcome(self, outcome: RouterOutcome) -> Effects:
        current = self.current(outcome.task)
        if current is None or current.mode != "small":
            return Effects()
        window = self.window(current)
        if window.breached or not observe_outcome(window, outcome, self.settings):
            return Effects()
        if outcome.sampled and outcome.served_by == "small":
            frontier = self.sampled_frontier.pop(outcome.call_id, None)
            if frontier is None:
                _remember(self.sampled_small, outcome.call_id, (outcome.task, outcome.output, outcome.ts.timestamp()))
            else:
                observe_sampled(window, outcome.ts.timestamp(), same_output(outcome.output, frontier[1]), self.settings)
        return self._assess(window, current)

    def on_captured(self, call: CapturedCall) -> Effects:
        """A call also sent to the frontier while the task is in small mode (source 'sampled')."""
        if call.source != "sampled":
            return Effects()
        current = self.current(call.task)
        if current is None or current.mode != "small":
            return Effects()
        small = self.sampled_small.pop(call.call_id, None)
        if small is None:
            _remember(self.sampled_frontier, call.call_id, (call.task, call.output))
            return Effects()
        window = self.window(current)
        if window.breached:
            return Effects()
        observe_sampled(window, small[2], same_output(small[1], call.output), self.settings)
        return self._assess(window, current)

    def _assess(self, window: Window, current: RoutingDecision) -> Effects:
        assessment = assess(window, self.settings)
        if not assessment.breach:
            return Effects()
        window.breached = True
        evidence = assessment.as_evidence() | {
            "verdict": "demoted", "shadow_baseline": self._baseline(current.task, current.model_version or "")}
        demotion = RoutingDecision(
            task=current.task, mode="shadow", model_version=current.model_version, threshold=current.threshold,
            reason=f"{assessment.reason}; demoted to shadow, a retrain follows once enough data since the drift "
                   "is captured", evidence=dumps(evidence),
            decided_by=self.settings.decided_by, predicted_fallback_rate=current.predicted_fallback_rate,
            triton_model=current.triton_model)
        return Effects(decisions=[self._decide(demotion)])

    # --- starting a graduation --------------------------------------------------------------

    def graduation(self, task: str, now=None) -> Step:
        """Where the task stands on its way to (and after) graduation, and why."""
        current = self.current(task)
        request = self.requests.get(task)
        if request is not None and request.request_id in self.refused_requests:
            request = None  # answered: the trainer refused it (the dead letter says why)
        pending = pending_request(request, self.latest_model(task), now or utcnow())
        return step(self.policies.get(task, "approve"), current, self.signals.get(task), pending,
                    self.first_request_reviews.get(task), demoted=evidence_of(current).get("gate") == "watch"
                    if current else False)

    def needs_look(self, task: str) -> bool:
        """Whether the periodic look at the data can change this task's graduation (no model asked for yet)."""
        return self.graduation(task).state in ("frontier", "collecting_reviews", "ready", "collecting")

    def drift_since(self, task: str) -> Optional[datetime]:
        """When the task was demoted for drift, while that demotion is its current decision."""
        current = self.current(task)
        return current.ts if current is not None and evidence_of(current).get("gate") == "watch" else None

    def on_signal(self, signal: Signal) -> Effects:
        """The periodic look at a task's data: note a changed state; in `auto`, ask for the first model."""
        self.signals[signal.task] = signal
        now = self.graduation(signal.task)
        effects = Effects()
        evidence = {"gate": "graduation", "state": now.state, "policy": self.policies.get(signal.task, "approve"),
                    "recommended": signal.recommended, **signal.readiness.as_dict()}
        if signal.drift is not None:
            evidence["drift"] = signal.drift.as_dict()
        if now.request:
            current = self.current(signal.task)
            request = RetrainRequest(task=signal.task, kind=now.kind, reason=now.reason, evidence=dumps(evidence),
                                     requested_by=self.settings.decided_by,
                                     serving_version=current.model_version if current else None)
            self.read_request(request)
            self.first_request_reviews[signal.task] = signal.readiness.reviewed_holdout
            effects.retrains.append(request)
            evidence |= {"requested": True, "retrain_request_id": request.request_id}
        return self._note_state(signal.task, now, evidence, effects)

    def on_request(self, request: RetrainRequest) -> Effects:
        """A retrain request read back (ours or a person's approval): the task is training."""
        self.read_request(request)
        now = self.graduation(request.task)
        if request.requested_by == self.settings.decided_by:  # ours: its decision or note already says so
            self.noted_states[request.task] = now.state
            return Effects()
        evidence = {"gate": "graduation", "state": now.state, "retrain_request_id": request.request_id,
                    "kind": request.kind}
        return self._note_state(request.task, now, evidence, Effects())

    def on_schedule(self, now=None, tasks: Optional[set[str]] = None) -> Effects:
        """A retrain (kind schedule) for each task (of `tasks`, default all) in small mode whose model is
        older than retrain_every_h."""
        every, now = self.settings.retrain_every_h, now or utcnow()
        effects = Effects()
        for task in [t for t in self.tasks() if tasks is None or t in tasks] if every else []:
            current, model = self.current(task), self.latest_model(task)
            if current is None or current.mode != "small" or model is None or self.graduation(task, now).state != "small":
                continue
            if (now - model.ts).total_seconds() < every * 3600 or self.policies.get(task) == "off":
                continue
            request = RetrainRequest(task=task, kind="schedule", requested_by=self.settings.decided_by,
                                     reason=f"scheduled: model {model.version} is older than {every:g} h",
                                     serving_version=current.model_version, ts=now)
            self.read_request(request)
            self.noted_states[task] = "training"
            effects.retrains.append(request)
        return effects

    def resume(self, task: str) -> Effects:
        """What a replica that starts owning `task` owes it for what arrived while no one did: the
        offline gate on its newest model and, in shadow, the shadow gate on its newest statistics
        (both give a verdict once, so resuming an already decided task sends nothing)."""
        effects = Effects()
        model = self.latest_model(task)
        if model is not None:
            effects = merged(effects, self.on_model(model))
        current = self.current(task)
        if current is not None and current.mode == "shadow" and current.model_version:
            stats = self.stats.get((task, current.model_version))
            if stats is not None:
                effects = merged(effects, self.on_stats(stats))
        return effects

    def read_refusal(self, request: RetrainRequest, reason: str) -> None:
        """The trainer dead-lettered `request` (a snapshot the gate could not use, a failed run)."""
        self.refused_requests[request.request_id] = reason

    def on_refusal(self, request: RetrainRequest, reason: str) -> Effects:
        """The trainer refused a request: the task leaves `training`, and the history says why."""
        self.read_refusal(request, reason)
        now = self.graduation(request.task)
        evidence = {"gate": "graduation", "state": now.state, "refused_request_id": request.request_id,
                    "trainer": reason}
        step_now = Step(now.state, f"the trainer refused the {request.kind} request: {reason}; {now.reason}")
        return self._note_state(request.task, step_now, evidence, Effects())

    def _note_state(self, task: str, now: Step, evidence: dict[str, Any], effects: Effects) -> Effects:
        """A note on the history when the state changes (or, collecting after a drift, its targets)."""
        key = state_key(evidence | {"state": now.state})
        if self.noted_states.get(task) != key:
            self.noted_states[task] = key
            note = self._refusal(task, now.reason, evidence)
            effects.refusals.append(note.model_copy(update={"reason": f"graduation {now.state}: {now.reason}"}))
        return effects

    # --- records ----------------------------------------------------------------------------

    def _decide(self, decision: RoutingDecision) -> RoutingDecision:
        self.unread.setdefault(decision.task, []).append(decision)
        return decision

    def _baseline(self, task: str, version: str) -> Optional[dict[str, int]]:
        stats = self.stats.get((task, version))
        return stats_counts(stats) if stats else None

    def _refusal(self, task: str, reason: str, evidence: dict[str, Any]) -> RoutingDecision:
        """A history record that keeps the current mode and says what was refused and why."""
        current = self.current(task)
        mode: Mode = current.mode if current else "frontier"
        kept = f"{mode} ({current.model_version})" if current and current.model_version else mode
        return RoutingDecision(
            task=task, mode=mode, model_version=current.model_version if current else None,
            threshold=current.threshold if current else None, reason=f"stays {kept}: {reason}",
            evidence=dumps(evidence), decided_by=self.settings.decided_by,
            predicted_fallback_rate=current.predicted_fallback_rate if current else None,
            triton_model=current.triton_model if current else None)


def promised_fallback(current: RoutingDecision, model: ModelRegistered,
                      result: GateResult) -> tuple[Optional[float], dict[str, Any]]:
    """The fallback rate a cutover promises, and the decision's evidence: the shadow decision's prediction
    (the holdout's, or the traffic's after a drift), or the live rate the shadow gate passed when that
    is higher. The watch calls a breach at the same level the shadow gate allows, so a task that passed
    near that level on live traffic would otherwise be demoted by its own fallback rate right after the
    cutover: the watch looks for a change after the cutover, measured from what the shadow saw."""
    evidence = result.as_evidence()
    held = current.predicted_fallback_rate if current.predicted_fallback_rate is not None else model.predicted_fallback_rate
    live = result.evidence.get("shadow_fallback_rate")
    if held is None or live is None or live <= held:
        return held, evidence
    promised = round(float(live), 4)
    return promised, evidence | {"promised_fallback_rate": {
        "rate": promised, "predicted_fallback_rate": held,
        "basis": "the live fallback rate the shadow gate passed, above the prediction"}}


def decision_for(model: ModelRegistered, mode: Mode, reason: str, evidence: dict[str, Any], decided_by: str,
                 threshold: Optional[float] = None, predicted: Optional[float] = None) -> RoutingDecision:
    """A decision that routes `model`'s task to `mode` with that model (its calibrated threshold);
    `predicted` replaces the model's predicted fallback rate (the traffic's, after a drift)."""
    threshold = model.threshold if threshold is None else threshold
    same = threshold == model.threshold
    if predicted is None:
        predicted = model.predicted_fallback_rate
    return RoutingDecision(task=model.task, mode=mode, model_version=model.version, threshold=threshold,
                           reason=reason, evidence=dumps(evidence), decided_by=decided_by,
                           predicted_fallback_rate=predicted if same else None,
                           triton_model=model.triton_model)


def state_key(evidence: dict[str, Any]) -> str:
    """What a graduation note records, to write the next one only on a change: the state, and for a
    task collecting after a drift the targets the review page shows (they move with the traffic)."""
    drift = evidence.get("drift") if evidence.get("state") == "collecting" else None
    if not isinstance(drift, dict):
        return str(evidence.get("state"))
    return f"collecting:{drift.get('min_reviewed_since')}:{drift.get('min_train_per_label')}"


def _remember(store: OrderedDict, key: str, value: Any) -> None:
    store[key] = value
    while len(store) > MAX_UNPAIRED_SAMPLES:
        store.popitem(last=False)


# --- a person's override -------------------------------------------------------------------

class OverrideRefused(ValueError):
    """`graduate route set` refused: the message says why."""


def override(task: str, mode: str, reason: str, user: str, current: Optional[RoutingDecision], *,
             model_version: Optional[str] = None, threshold: Optional[float] = None,
             model: Optional[ModelRegistered] = None, stats: Optional[ShadowStats] = None) -> RoutingDecision:
    """A person's decision, checked; `model` is the registration of the version it names."""
    if not reason or not reason.strip():
        raise OverrideRefused('a reason is required (--reason "…"): every routing decision is audited')
    if mode not in ("frontier", "shadow", "small"):
        raise OverrideRefused(f"mode must be frontier, shadow or small, not {mode!r}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise OverrideRefused(f"threshold {threshold} is out of range: a confidence threshold lies in [0, 1]")
    previous = ({"mode": current.mode, "model_version": current.model_version, "threshold": current.threshold,
                 "decision_id": current.decision_id} if current else None)
    evidence: dict[str, Any] = {"gate": "override", "verdict": "override", "previous": previous}
    if mode == "frontier":
        if model_version is not None or threshold is not None:
            raise OverrideRefused("frontier mode takes no --model or --threshold")
        return RoutingDecision(task=task, mode="frontier", reason=reason.strip(), evidence=dumps(evidence),
                               decided_by=user)
    if mode == "small" and (model_version is None or threshold is None):
        raise OverrideRefused("small mode needs both --model and --threshold: the router must know which model "
                              "answers and below which confidence it falls back")
    if model_version is None:  # shadow: keep shadowing the current model
        model_version = current.model_version if current else None
        if model_version is None:
            raise OverrideRefused("shadow mode needs a model (--model): there is none to shadow")
    if model is None or model.version != model_version or model.task != task:
        raise OverrideRefused(f"model {model_version} of {task} is not registered on the models topic")
    if mode == "shadow":
        evidence["shadow_baseline"] = stats_counts(stats) if stats else None
    elif threshold != model.threshold:
        evidence["note"] = (f"threshold {threshold} differs from the calibrated {model.threshold}: "
                            "no predicted fallback rate to watch against")
    return decision_for(model, mode, reason.strip(), evidence, user, threshold)  # type: ignore[arg-type]


def reviews_needed(signal: Optional[Signal]) -> Optional[int]:
    """Reviews the task still needs: of data captured since the drift when it collects after one."""
    if signal is None:
        return None
    return signal.drift.reviews_needed if signal.drift is not None else signal.readiness.reviews_needed
