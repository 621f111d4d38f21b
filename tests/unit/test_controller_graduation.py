"""Starting graduations (services/controller/graduation.py) and what the data lacks (curator readiness), no broker."""
from __future__ import annotations

from datetime import timedelta

from services.common.contracts import RetrainRequest, utcnow
from services.controller.control import Controller, evidence_of
from services.controller.graduation import Signal
from services.controller.settings import ControllerSettings
from services.controller.store import emits_of
from services.curator.readiness import readiness
from tests.unit.test_gate import registered

SETTINGS = ControllerSettings(min_holdout=300)
LABELS = {"train": {"a": 50, "b": 40}, "holdout": {"a": 10, "b": 9}}


def signal(reviewed: int, *, recommended: bool = True, task: str = "intent") -> Signal:
    return Signal(task, recommended, () if recommended else ("volume",),
                  readiness(task, "classification", reviewed, LABELS, SETTINGS.min_holdout))


def test_readiness_counts_the_reviews_the_gate_still_needs_and_labels_without_examples():
    r = readiness("intent", "classification", 120, {"train": {"a": 5}, "holdout": {"a": 2, "b": 1}}, 300)
    assert r.reviews_needed == 180 and not r.ready
    assert "too few reviewed holdout items: 120, the gate needs 300 (180 more)" in r.reason
    assert "1 holdout labels without a training example: b" in r.reason
    assert readiness("intent", "classification", 300, LABELS, 300).ready
    extraction = readiness("slots", "extraction", 300, {"train": {"{}": 3}, "holdout": {'{"x": 1}': 1}}, 300)
    assert extraction.ready  # an extraction answer is not a label a model must have seen


def test_approve_waits_for_reviews_then_for_a_person():
    c = Controller(SETTINGS, {"intent": "approve"})
    quiet = c.on_signal(signal(0, recommended=False))
    assert [n.reason for n in quiet.refusals] == ["graduation frontier: the profiler says stay on the frontier "
                                                  "(failing: volume)"] and not quiet.retrains
    short = c.on_signal(signal(120))
    (note,) = short.refusals
    assert note.mode == "frontier" and evidence_of(note)["reviews_needed"] == 180
    assert "graduation collecting_reviews" in note.reason and "(180 more)" in note.reason
    assert not c.on_signal(signal(150))  # same state: nothing more on the history
    ready = c.on_signal(signal(300))
    assert not ready.retrains and "`graduate approve intent`" in ready.refusals[0].reason
    assert c.graduation("intent").state == "ready"
    approval = RetrainRequest(task="intent", kind="first", reason="approved by ana", requested_by="ana")
    training = c.on_request(approval)
    assert c.graduation("intent").state == "training" and "training" in training.refusals[0].reason
    assert not c.needs_look("intent")  # no more reads of the topics while the model is trained


def test_auto_requests_the_first_model_once_and_retries_only_with_more_reviews():
    c = Controller(SETTINGS, {"intent": "auto"})
    effects = c.on_signal(signal(300))
    (request,) = effects.retrains
    assert request.kind == "first" and request.requested_by == "controller"
    assert [e.spec.name for e in emits_of(effects)] == ["graduate.routing.history", "graduate.retrain.requests"]
    assert not c.on_signal(signal(310)).retrains  # pending: the trainer is on it
    refused = registered("v1", both=100, small_only=0, frontier_only=80, neither=20)
    refused = refused.model_copy(update={"ts": request.ts + timedelta(seconds=1)})
    assert c.on_model(refused).refusals  # the offline gate says no: the task stays on the frontier
    again = c.on_signal(signal(300))
    assert not again.retrains and c.graduation("intent").state == "ready"
    assert c.on_signal(signal(360)).retrains  # more reviews: try again


def test_off_never_asks_and_a_restart_remembers_what_was_asked():
    off = Controller(SETTINGS, {"intent": "off"})
    assert not off.on_signal(signal(500)).retrains and off.graduation("intent").state == "off"
    first = Controller(SETTINGS, {"intent": "auto"})
    effects = first.on_signal(signal(300))
    restarted = Controller(SETTINGS, {"intent": "auto"})
    for note in effects.refusals:
        restarted.read_history(note)
    stale = effects.retrains[0].model_copy(update={"ts": utcnow() - timedelta(days=2)})
    restarted.read_request(stale)  # unanswered for days: refused or lost; not retried on the same reviews
    assert not restarted.on_signal(signal(300)).retrains
    assert restarted.graduation("intent").state == "ready"


def test_a_request_the_trainer_refused_takes_the_task_out_of_training(codec):
    from services.common.kafka import dead_letter
    from services.controller.store import trainer_refusal

    c = Controller(SETTINGS, {"intent": "approve"})
    c.on_signal(signal(120))
    approval = RetrainRequest(task="intent", kind="first", reason="approved by ana", requested_by="ana")
    c.on_request(approval)
    assert c.graduation("intent").state == "training"
    letter = dead_letter("ns.graduate.retrain.requests", 0, 3, "trainer",
                         ValueError("too few reviewed holdout items: 120, the gate needs 300 (180 more)"),
                         b"intent", codec.encode(approval))
    request, reason = trainer_refusal(letter, codec, "ns.")
    assert request == approval and trainer_refusal(letter, codec, "other.") is None
    effects = c.on_refusal(request, reason)
    (note,) = effects.refusals
    assert c.graduation("intent").state == "collecting_reviews" and not effects.retrains
    assert note.reason.startswith("graduation collecting_reviews: the trainer refused the first request: too few")
    assert evidence_of(note)["refused_request_id"] == approval.request_id


def test_a_schedule_asks_for_a_retrain_of_an_old_model_once():
    from tests.unit.test_controller import cut_over

    never = Controller(SETTINGS)
    cut_over(never)
    assert not never.on_schedule(utcnow() + timedelta(days=365))  # no schedule configured
    c = Controller(ControllerSettings(retrain_every_h=24))
    cut_over(c)
    assert not c.on_schedule(utcnow() + timedelta(hours=1))  # young enough
    (request,) = c.on_schedule(utcnow() + timedelta(hours=25)).retrains
    assert (request.kind, request.serving_version, request.task) == ("schedule", "v1", "intent")
    assert c.graduation("intent", utcnow() + timedelta(hours=25)).state == "training"
    assert not c.on_schedule(utcnow() + timedelta(hours=26))  # pending: asked once
