"""The stream workers' readiness and liveness rules (services/common/probes.py)."""
from __future__ import annotations

from services.common.probes import Health, not_ready_reasons, stalled_reason


def test_ready_only_with_an_assignment_held_and_every_state_restored():
    assert not_ready_reasons(True, {"state calls": True, "routing replay": True}) == []
    assert not_ready_reasons(False, {"state calls": True}) == ["no assignment held (joining the group or rebalancing)"]
    assert not_ready_reasons(True, {"state calls": False, "routing replay": True}) == ["state calls not restored"]


def test_stalled_only_when_records_wait_and_nothing_was_handled_for_too_long():
    assert stalled_reason(now=100.0, progress_at=0.0, lag=5, stall_after_s=60, ready=True).startswith("5 records")
    assert stalled_reason(now=100.0, progress_at=50.0, lag=5, stall_after_s=60, ready=True) is None  # recent
    assert stalled_reason(now=100.0, progress_at=0.0, lag=0, stall_after_s=60, ready=True) is None  # idle
    assert stalled_reason(now=100.0, progress_at=0.0, lag=5, stall_after_s=60, ready=False) is None  # restoring


def test_health_reads_its_registered_checks_at_probe_time():
    restored = {"done": False}
    h = Health(stall_after_s=0.0, assignment_held=True)
    h.require("state calls", lambda: restored["done"])
    assert h.readiness() == ["state calls not restored"]
    assert h.liveness(lag=10) is None  # not ready: readiness keeps it out, no restart
    restored["done"] = True
    assert h.readiness() == []
    h.progress_at -= 1.0
    assert "10 records waiting" in h.liveness(lag=10)
    h.progressed()
    h.stall_after_s = 60.0
    assert h.liveness(lag=10) is None
    h.assignment_held = False  # a rebalance began
    assert h.readiness() == ["no assignment held (joining the group or rebalancing)"]
