"""The trainer's own settings: chosen from the data, overridable knob by knob, explained."""
from types import SimpleNamespace

import pytest

from trainer.schedule import BudgetPlan, fit_to_budget
from trainer.recipe import (FINETUNE_SHARE, FROZEN_EMBEDDINGS, FROZEN_LAYERS, MAX_EPOCHS, MIN_EPOCHS, choose_epochs,
                            choose_max_length, choose_recipe, describe)


def knobs(**set_):
    base = dict(epochs=None, batch_size=None, learning_rate=None, head_learning_rate=None, max_length=None,
                patience=None, evals_per_epoch=None, time_budget_s=600.0, weight_decay=0.01, warmup_ratio=0.06)
    return SimpleNamespace(**(base | set_))


def test_max_length_follows_the_inputs_not_a_constant():
    short = [12] * 990 + [200] * 10  # a rare outlier does not set the length
    assert choose_max_length(short) == 16
    long = list(range(100, 300))
    assert choose_max_length(long) == 256  # capped
    assert choose_max_length([41] * 100) == 48  # rounded up to 8


def test_small_tasks_get_more_epochs_and_smaller_batches():
    assert choose_epochs(500) == min(MAX_EPOCHS, 80)
    assert choose_epochs(100_000) == MIN_EPOCHS
    small = choose_recipe(knobs(), n_train=500, n_labels=20, token_lengths=[20] * 500, device="cpu")
    large = choose_recipe(knobs(), n_train=20_000, n_labels=20, token_lengths=[20] * 500, device="cpu")
    assert small.batch_size < large.batch_size
    assert small.max_epochs > large.max_epochs
    assert choose_recipe(knobs(), n_train=20_000, n_labels=20, token_lengths=[20], device="cuda").batch_size == 64


def test_every_knob_set_by_the_user_wins_and_is_marked():
    r = choose_recipe(knobs(epochs=2, batch_size=8, learning_rate=3e-5, max_length=40), n_train=5000, n_labels=5,
                      token_lengths=[100] * 10, device="cpu")
    assert (r.max_epochs, r.batch_size, r.learning_rate, r.max_length) == (2, 8, 3e-5, 40)
    assert r.why["epochs"] == "set by the user" and r.why["max_length"] == "set by the user"
    auto = choose_recipe(knobs(), n_train=5000, n_labels=5, token_lengths=[100] * 10, device="cpu")
    assert "99th percentile" in auto.why["max_length"]


def test_time_budget_is_a_share_of_the_run_and_zero_means_none():
    assert choose_recipe(knobs(time_budget_s=400), n_train=10, n_labels=2, token_lengths=[9],
                         device="cpu").time_budget_s == pytest.approx(FINETUNE_SHARE * 400)
    assert choose_recipe(knobs(time_budget_s=0), n_train=10, n_labels=2, token_lengths=[9],
                         device="cpu").time_budget_s is None


def test_the_plan_fits_the_budget_both_ways_and_decays_to_zero_at_its_end():
    plan = BudgetPlan(total=1000, warmup_ratio=0.1)
    assert plan.factor(0) == pytest.approx(0.01) and plan.factor(99) == pytest.approx(1.0)
    # 0.5 s a step + 5 s evaluations every 50 steps (0.6 s a step), 100 s left less two evaluations: 150 more
    fit_to_budget(plan, step=100, per_step=0.5, eval_cost=5.0, left=100.0, eval_every=50)
    assert plan.total == 250 and plan.shortened
    assert plan.factor(plan.total) == 0.0 and plan.factor(plan.total - 10) > 0.0
    fit_to_budget(plan, step=110, per_step=0.1, eval_cost=5.0, left=1e4, eval_every=50)
    assert plan.total == plan.max_total == 1000  # a faster pace lengthens it again, up to max_epochs
    assert fit_to_budget(plan, step=120, per_step=0.5, eval_cost=5.0, left=-1.0, eval_every=50) == 120  # spent


def test_thread_tuner_keeps_the_faster_count_and_measures_again():
    from trainer.finetune import ThreadTuner

    tuner = ThreadTuner([2, 1], every=20, probe=2)
    cost = {2: 6.6, 1: 0.55}  # a busy machine: one thread is faster
    for step in range(0, 12):
        threads = tuner.threads_for(step)
        tuner.record(step, threads, cost[threads])
    assert tuner.best == 1 and tuner.choices[-1]["threads"] == 1
    assert tuner.threads_for(10) == 1
    cost = {2: 0.3, 1: 0.55}  # the machine got quiet: the next probe window goes back to two
    for step in range(12, 30):
        threads = tuner.threads_for(step)
        tuner.record(step, threads, cost[threads])
    assert tuner.best == 2 and len(tuner.choices) == 2


def test_classification_freezes_the_word_embeddings_unless_the_user_says_no():
    auto = choose_recipe(knobs(), n_train=5000, n_labels=5, token_lengths=[20], device="cpu")
    assert auto.frozen == FROZEN_EMBEDDINGS and auto.optimizer_impl == "fused"
    assert "19 % of a CPU step" in auto.why["freeze_word_embeddings"] and "frozen word_embeddings" in describe(auto)
    kept = choose_recipe(knobs(freeze_word_embeddings=False), n_train=5000, n_labels=5, token_lengths=[20],
                         device="cpu")
    assert kept.frozen == () and kept.why["freeze_word_embeddings"] == "set by the user"
    tokens = choose_recipe(knobs(), n_train=5000, n_labels=5, token_lengths=[20], device="cpu", kind="extraction")
    assert tokens.frozen == ()


def test_a_classifier_freezes_its_two_lowest_layers_by_default_with_the_reason():
    auto = choose_recipe(knobs(), n_train=5000, n_labels=5, token_lengths=[20], device="cpu")
    assert auto.frozen_layers == FROZEN_LAYERS == 2
    assert "fewer CPU seconds an epoch" in auto.why["frozen_layers"]
    assert "2 lowest layers" in describe(auto)
    tokens = choose_recipe(knobs(), n_train=5000, n_labels=5, token_lengths=[20], device="cpu", kind="extraction")
    assert tokens.frozen_layers == 0 and tokens.why["frozen_layers"] == "not measured on token classification"


def test_frozen_layers_is_overridable_and_follows_trained_word_embeddings():
    none = choose_recipe(knobs(frozen_layers=0), n_train=5000, n_labels=5, token_lengths=[20], device="cpu")
    assert none.frozen_layers == 0 and none.why["frozen_layers"] == "set by the user"
    assert "lowest layers" not in describe(none)
    four = choose_recipe(knobs(frozen_layers=4), n_train=5000, n_labels=5, token_lengths=[20], device="cpu",
                         kind="extraction")
    assert four.frozen_layers == 4
    # a user who trains the word embeddings gets every layer above them trained too, unless they say otherwise
    words = choose_recipe(knobs(freeze_word_embeddings=False), n_train=5000, n_labels=5, token_lengths=[20],
                          device="cpu")
    assert words.frozen == () and words.frozen_layers == 0


def test_the_trainer_settings_carry_the_frozen_layers_knob(monkeypatch):
    from trainer.settings import TrainerSettings

    monkeypatch.setenv("GRADUATE_TRAIN_FROZEN_LAYERS", "0")
    settings = TrainerSettings()
    assert settings.frozen_layers == 0
    assert choose_recipe(settings, n_train=5000, n_labels=5, token_lengths=[20], device="cpu").frozen_layers == 0
    monkeypatch.delenv("GRADUATE_TRAIN_FROZEN_LAYERS")
    assert choose_recipe(TrainerSettings(), n_train=5000, n_labels=5, token_lengths=[20],
                         device="cpu").frozen_layers == FROZEN_LAYERS


def test_the_model_card_says_what_the_recipe_chose_and_why():
    from trainer.model_card import training_section

    auto = choose_recipe(knobs(frozen_layers=1), n_train=5000, n_labels=5, token_lengths=[20], device="cpu")
    text = training_section({"recipe": auto.as_dict(), "epochs_run": 2.5, "stopped_by": "time budget",
                             "best_val_accuracy": 0.875, "examples_per_s": 60.0})
    assert "| frozen_layers | 1 | set by the user |" in text
    assert "| max_length | 24 | 99th percentile" in text and "ended by time budget" in text and "87.5 %" in text
    assert training_section(None) == "" and training_section({"recipe": None}) == ""
