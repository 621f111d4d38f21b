"""The fine-tune's step plan: re-fitted to the time budget in both directions, with a rate that never rises.

A CPU run shares its machine: the pace of a step changes several-fold while it runs. The plan is
re-fitted from the *recent* pace (the last `PACE_WINDOW` steps, not the run's average), shorter
when the machine gets slower and longer again when it gets faster, never past the recipe's
`max_epochs`. The learning-rate factor is linear warm-up to 1 over the first `warmup` steps
(fixed when the run starts), then a linear decay that reaches 0 at the planned end. A re-plan
after warm-up holds the current factor and spreads its decay over the new remainder:

    factor(t) = f_a * (total - t) / (total - a)     for t >= a,

where `a` is the step of the last re-plan and `f_a` the factor there. So the factor is continuous
at every re-plan and falls (or stays) afterwards: an extension flattens the decay, a shortening
steepens it, and neither raises the rate mid-run (DESIGN, issue 14: the plan that grows back).
"""
from __future__ import annotations

from collections import deque

# Steps whose pace the re-plan trusts: about a minute of a CPU Banking77 run, so a load change
# shows within a re-plan or two, while one slow step (a thread probe, a GC pause) does not.
PACE_WINDOW = 100


class BudgetPlan:
    """How many steps the run will take, and the learning-rate factor of each."""

    def __init__(self, total: int, warmup_ratio: float):
        self.max_total = max(1, total)  # the schedule of max_epochs: a re-plan never goes past it
        self.total = self.max_total
        self.warmup = max(1, int(self.max_total * warmup_ratio))
        self.anchor_step, self.anchor_factor = self.warmup, 1.0

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return min(1.0, (step + 1) / self.warmup)
        if step >= self.total:
            return 0.0
        return self.anchor_factor * (self.total - step) / max(1, self.total - self.anchor_step)

    def replan(self, step: int, total: int) -> int:
        """End at `total` (`step`: end now; at most `max_total`); returns the new total."""
        total = min(self.max_total, max(step, int(total)))
        if total != self.total:
            if step >= self.warmup:
                self.anchor_step, self.anchor_factor = step, self.factor(step)
            self.total = total
        return self.total

    @property
    def shortened(self) -> bool:
        return self.total < self.max_total


class Pace:
    """Seconds a training step takes lately: over the last `window` steps (evaluations excluded)."""

    def __init__(self, window: int = PACE_WINDOW):
        self.marks: deque[tuple[int, float]] = deque([(0, 0.0)], maxlen=window + 1)

    def mark(self, step: int, train_seconds: float) -> None:
        self.marks.append((step, train_seconds))

    def per_step(self) -> float:
        (s0, t0), (s1, t1) = self.marks[0], self.marks[-1]
        return (t1 - t0) / max(1, s1 - s0)


def fit_to_budget(plan: BudgetPlan, step: int, per_step: float, eval_cost: float, left: float,
                  eval_every: int) -> int:
    """Re-plan so the remaining steps and their evaluations end inside `left` seconds.

    Both ways: fewer steps when the pace slowed, more (up to the recipe's maximum) when it sped up.
    Each step carries its share of the periodic evaluations; two more are kept aside (the one this
    step may be due, and the final one at the plan's end)."""
    cost = per_step + eval_cost / max(1, eval_every)
    if cost <= 0:
        return plan.total
    return plan.replan(step, step + int(max(0.0, left - 2 * eval_cost) / cost))
