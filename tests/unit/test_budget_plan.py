"""The fine-tune's plan re-fits to the time budget from the recent pace, both ways; the rate never rises."""
import dataclasses
import io
import random

import pytest
import torch
from rich.console import Console

from trainer.finetune import FineTuned, train_loop
from trainer.recipe import Recipe
from trainer.schedule import BudgetPlan, Pace, fit_to_budget

BUDGET = 600.0


class Clock:
    """Simulated seconds: each step and each evaluation advance it by what the machine's pace says."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Quadratic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 1)


def run(pace, *, accuracies=None, max_epochs=500, eval_cost=2.0):
    """The real train loop on a trivial model, its clock driven by `pace(seconds) -> seconds a step`."""
    clock, model, lrs = Clock(), Quadratic(), []
    x = torch.ones(1, 2)
    recipe = Recipe(max_length=8, batch_size=4, learning_rate=1e-3, head_learning_rate=1e-3, weight_decay=0.0,
                    warmup_ratio=0.01, max_epochs=max_epochs, patience=3, evals_per_epoch=1, time_budget_s=BUDGET,
                    head_init="random")
    holder = {}

    def step_loss(rows):
        clock.now += pace(clock.now)
        lrs.append(holder["optimizer_lr"]())
        return (model.head(model.body(x)) ** 2).sum()

    scores = iter(accuracies) if accuracies else (i / 1e6 for i in range(10**6))  # default: always improving

    def validate():
        clock.now += eval_cost
        return 1.0, next(scores, 0.5)

    result = FineTuned(model, None, ["a"], "cpu", 8)
    original = torch.optim.AdamW

    class Recording(original):  # the rate each step actually used
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            holder["optimizer_lr"] = lambda: self.param_groups[0]["lr"]

    torch.optim.AdamW = Recording
    try:
        train_loop(model, lengths=[5] * 40, step_loss=step_loss, validate=validate, recipe=recipe, seed=0,
                   head_prefix="head.", result=result, label="test", console=Console(file=io.StringIO()),
                   clock=clock)
    finally:
        torch.optim.AdamW = original
    return result, lrs, clock.now


def never_rises_after_warmup(lrs, warmup):
    after = lrs[warmup:]
    return all(b <= a + 1e-15 for a, b in zip(after, after[1:]))


def test_a_pace_that_speeds_up_mid_run_uses_the_budget():
    # 1 s a step for the first 200 s (a busy machine), then 0.25 s (quiet): the old plan stopped at ~280 s
    result, lrs, used = run(lambda now: 1.0 if now < 200 else 0.25)
    assert result.stopped_by == "time budget"
    assert 0.9 * BUDGET <= used <= BUDGET
    assert never_rises_after_warmup(lrs, warmup=50)
    assert max(h["planned_steps"] for h in result.history[5:]) > min(h["planned_steps"] for h in result.history[:5])


def test_a_pace_that_slows_down_mid_run_ends_within_the_budget():
    result, lrs, used = run(lambda now: 0.25 if now < 150 else 1.5)
    assert result.stopped_by == "time budget"
    assert 0.9 * BUDGET <= used <= BUDGET
    assert never_rises_after_warmup(lrs, warmup=50)
    assert lrs[-1] < 0.05 * max(lrs)  # the decay reached (nearly) zero at the new end


def test_a_noisy_pace_never_raises_the_rate_and_stays_within_budget():
    rng = random.Random(7)
    result, lrs, used = run(lambda now: rng.choice([0.2, 0.5, 1.0, 2.0]))
    assert used <= BUDGET and never_rises_after_warmup(lrs, warmup=50)


def test_early_stopping_still_wins_over_a_longer_plan():
    # validation peaks at the 3rd evaluation: patience 3 ends the run long before the budget
    result, _, used = run(lambda now: 0.25, accuracies=[0.5, 0.6, 0.7, 0.6, 0.6, 0.6, 0.6])
    assert result.stopped_by == "early stopping" and result.best_step == 30
    assert used < 0.2 * BUDGET


def test_the_plan_never_passes_max_epochs_and_ends_on_schedule_when_the_budget_is_ample():
    result, _, used = run(lambda now: 0.01, max_epochs=3)
    assert result.stopped_by == "schedule" and result.epochs_run == pytest.approx(3.0) and used < BUDGET


def test_an_extension_holds_the_rate_and_spreads_its_decay():
    plan = BudgetPlan(total=1000, warmup_ratio=0.1)
    plan.replan(200, 400)
    before = plan.factor(300)
    plan.replan(300, 900)  # the machine got faster: longer, flatter, from the same rate
    assert plan.factor(300) == pytest.approx(before) and plan.factor(301) < before
    assert plan.factor(899) > 0.0 and plan.factor(900) == 0.0


def test_the_pace_is_the_recent_window_not_the_run_average():
    pace = Pace(window=10)
    for step in range(1, 101):
        pace.mark(step, step * 1.0 if step <= 90 else 90 + (step - 90) * 0.2)
    assert pace.per_step() == pytest.approx(0.2)
    plan = BudgetPlan(total=10_000, warmup_ratio=0.0)
    assert fit_to_budget(plan, 100, pace.per_step(), eval_cost=0.0, left=20.0, eval_every=10) == 200


def test_an_epoch_is_not_validated_twice_in_a_row():
    from trainer.finetune import is_eval_step

    # Banking77: 265 batches an epoch, two evaluations an epoch (every 132): 132 and 265, not 264 too.
    assert [b for b in range(1, 266) if is_eval_step(b, 265, 132)] == [132, 265]
    assert [b for b in range(1, 265) if is_eval_step(b, 264, 132)] == [132, 264]
    assert [b for b in range(1, 8) if is_eval_step(b, 7, 1)] == list(range(1, 8))
    assert [b for b in range(1, 11) if is_eval_step(b, 10, 3)] == [3, 6, 10]
