"""What a stream worker's probes answer (GET /readyz and /livez on its web port).

Why it exists: faust's web root answers as soon as the web server is up — while the worker's state
is still being read back, with no partition assigned, or with the consumer stuck — so a probe on
it always passes. These say what the orchestrator needs to know:

- ready: the worker holds its assignment — the group's last rebalance gave it one and no
  rebalance is under way; the set may be empty (a replica beyond the partition count, or a
  surge pod during a rolling update at full scale, must not block the rollout) — and every
  state it serves from is restored (state tables read back, the routing topic replayed: each app
  registers what it waits for);
- live: the consumer loop made progress recently — an event or batch was handled within
  `stall_after_s`, or there was nothing to handle (no lag on the assigned partitions). A worker
  that is not ready counts as live (readiness keeps traffic away; the startup probe bounds a
  start). A consumer whose fetches stop altogether leaves its lag stale here; the broker-side lag
  (kafka-exporter, deploy/observability/alerts.yml) catches that.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional


def not_ready_reasons(assignment_held: bool, checks: dict[str, bool]) -> list[str]:
    """Why the worker is not ready; empty when it is."""
    reasons = [] if assignment_held else ["no assignment held (joining the group or rebalancing)"]
    return reasons + [f"{name} not restored" for name, ok in sorted(checks.items()) if not ok]


def stalled_reason(now: float, progress_at: float, lag: int, stall_after_s: float, ready: bool) -> Optional[str]:
    """Why the consumer loop counts as stuck, or None when it is live."""
    if not ready or lag <= 0:
        return None
    idle = now - progress_at
    if idle <= stall_after_s:
        return None
    return f"{lag} records waiting and nothing handled for {idle:.0f} s (limit {stall_after_s:.0f} s)"


@dataclass
class Health:
    """The worker's probe state: readiness checks apps register, and the time of the last progress."""

    stall_after_s: float
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    progress_at: float = field(default_factory=time.monotonic)
    assignment_held: bool = False  # set on partitions assigned, cleared on partitions revoked

    def require(self, name: str, is_ready: Callable[[], bool]) -> None:
        """Readiness waits for `is_ready()` (e.g. a state read back, a topic replayed)."""
        self.checks[name] = is_ready

    def progressed(self) -> None:
        """An event or batch was handled, or the worker found nothing left to handle."""
        self.progress_at = time.monotonic()

    def readiness(self) -> list[str]:
        return not_ready_reasons(self.assignment_held, {n: bool(check()) for n, check in self.checks.items()})

    def liveness(self, lag: int) -> Optional[str]:
        ready = not self.readiness()
        return stalled_reason(time.monotonic(), self.progress_at, lag, self.stall_after_s, ready)
