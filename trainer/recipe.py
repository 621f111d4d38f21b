"""The fine-tune's settings, picked from the data when the user sets none (no knobs needed).

A user's task is not ours: how many labels, how many examples, how long the inputs are and how
much time the machine has all differ. `choose_recipe` reads those and writes down every choice
with its reason (the model card and ModelRegistered carry it); any knob the user did set wins and
is marked as set. Nothing here looks at the holdout: the only data it sees is the train split.

The rules, from what MiniLM-sized encoders need (and measured on Banking77's *train* split only,
never its test set; bench/results/quality.json then checks them on tasks nobody tuned for):
- max length: the 99th percentile of the train inputs' token lengths, rounded up to 8, so almost
  nothing is truncated and nothing is padded for a rare long outlier;
- batch size: 32 (16 under 2,000 examples, so a small task still gets enough optimizer steps);
  64 on a GPU;
- learning rates: 1e-4 for the encoder (small encoders want more than BERT-base's 2e-5..5e-5)
  and 2e-3 for the head, which starts from the labels' prototypes (mean embedding of each label's
  examples), so it needs to move less than a random head;
- frozen word embeddings (classification): AdamW's update and the dense gradient of the 11.7 M-value
  word-embedding matrix were 19 % of a step's CPU time (0.42 -> 0.34 CPU s, one thread, Banking77;
  0.30 with fused AdamW); a batch touches a few hundred of its rows, so leaving it as the base model
  has it buys more steps in the same budget; AdamW is the fused implementation (one kernel);
- frozen lower layers (classification): the embeddings and the two lowest of MiniLM's six layers stay
  as the base model has them, so backward stops above the third layer: 19-20 % fewer CPU seconds an
  epoch; at the default budget, side by side, +2 and +6 validation rows of 942 on Banking77 (two seeds,
  the budget ended both) and -2 of 941 on HWU64 (early stopping ended both, 43 % fewer CPU seconds)
  (validation only; bench/results/recipe.json);
- epochs: as many as it takes to see the data at least `MIN_EPOCHS` times and at least
  `MIN_EXAMPLES_SEEN` examples (a 500-example task needs far more than 3 epochs), at most
  `MAX_EPOCHS`; early stopping on validation accuracy ends sooner, and the time budget ends
  sooner still: the loop measures its recent pace and re-plans the schedule to end inside it,
  longer again when the machine speeds up (trainer/schedule.py).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

MIN_EPOCHS, MAX_EPOCHS = 4, 40
MIN_EXAMPLES_SEEN = 40_000
MIN_LENGTH, MAX_LENGTH = 16, 256
SMALL_TASK_EXAMPLES = 2_000
# The embedding matrices left as the base model has them (by module name) when the encoder is frozen
# there: 11.7 M of MiniLM-L6's 22.7 M parameters, of which a batch touches a few hundred rows.
FROZEN_EMBEDDINGS = ("word_embeddings",)
# The embeddings and this many of the lowest encoder layers left as the base model has them in a classifier.
FROZEN_LAYERS = 2
# The share of the run's wall-time budget the fine-tune loop may use: the rest goes to export,
# int8, calibration, holdout predictions, the Triton load and the model card (measured at about
# a fifth of a 10-minute Banking77 run on 2 cores).
FINETUNE_SHARE = 0.75


@dataclass(frozen=True)
class Recipe:
    max_length: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float
    weight_decay: float
    warmup_ratio: float
    max_epochs: int
    patience: int
    evals_per_epoch: int
    time_budget_s: Optional[float]  # for the fine-tune loop alone; None: no limit
    head_init: str  # "prototypes" (classification) or "random"
    why: dict[str, str] = field(default_factory=dict)
    # Parameters (by name suffix, e.g. "word_embeddings") left as the base model has them.
    frozen: tuple[str, ...] = ()
    label_smoothing: float = 0.0
    optimizer_impl: str = "default"  # AdamW's implementation: "default", "foreach" or "fused"
    # Layer-wise rate decay: encoder layer i of L learns at learning_rate * layer_decay ** (L - 1 - i),
    # the embeddings at layer_decay ** L (1.0: one rate for the whole encoder).
    layer_decay: float = 1.0
    # The embeddings and the lowest `frozen_layers` encoder layers left as the base model has them
    # (backward then stops above them: fewer CPU seconds a step).
    frozen_layers: int = 0
    # Small-loss trick for noisy labels: the share of each batch with the highest loss left out of the
    # step, ramped up linearly over the first epoch (0: every example counts).
    small_loss_drop: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def length_percentile(lengths: list[int], q: float = 99.0) -> int:
    return int(np.percentile(np.asarray(lengths), q)) if lengths else MIN_LENGTH


def choose_max_length(lengths: list[int], model_limit: int = 512) -> int:
    """The 99th percentile of the token lengths (special tokens included), rounded up to 8."""
    p99 = length_percentile(lengths)
    return int(min(model_limit, max(MIN_LENGTH, min(MAX_LENGTH, 8 * math.ceil(p99 / 8)))))


def choose_epochs(n_train: int) -> int:
    if n_train <= 0:
        return MIN_EPOCHS
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / n_train))))


def choose_recipe(settings: Any, *, n_train: int, n_labels: int, token_lengths: list[int], device: str,
                  kind: str = "classification", model_limit: int = 512) -> Recipe:
    """Every fine-tune setting: the user's where set (GRADUATE_TRAIN_*), else chosen from the data."""
    why: dict[str, str] = {}

    def pick(name: str, auto: Any, reason: str) -> Any:
        value = getattr(settings, name, None)
        if value is not None:
            why[name] = "set by the user"
            return value
        why[name] = reason
        return auto

    p99 = length_percentile(token_lengths)
    max_length = pick("max_length", choose_max_length(token_lengths, model_limit),
                      f"99th percentile of {len(token_lengths)} train inputs is {p99} tokens")
    gpu = device == "cuda"
    auto_batch = 64 if gpu else (16 if n_train < SMALL_TASK_EXAMPLES else 32)
    batch_size = pick("batch_size", auto_batch, "GPU" if gpu else
                      f"{n_train} train examples ({'<' if n_train < SMALL_TASK_EXAMPLES else '>='} "
                      f"{SMALL_TASK_EXAMPLES})")
    learning_rate = pick("learning_rate", 1e-4, "encoder rate for a 6-layer MiniLM-sized encoder")
    head_learning_rate = pick("head_learning_rate", 2e-3 if kind == "classification" else 1e-3,
                              "the head starts from label prototypes" if kind == "classification"
                              else "a new token head")
    epochs = pick("epochs", choose_epochs(n_train),
                  f"see {n_train} examples at least {MIN_EPOCHS} times and {MIN_EXAMPLES_SEEN:,} examples in all "
                  f"(at most {MAX_EPOCHS}); early stopping and the time budget end sooner")
    budget = getattr(settings, "time_budget_s", None)
    loop_budget = None if budget is None or budget <= 0 else FINETUNE_SHARE * float(budget)
    why["time_budget_s"] = ("no limit" if loop_budget is None else
                            f"{FINETUNE_SHARE:.0%} of the run's {budget:.0f} s budget")
    evals = pick("evals_per_epoch", 2 if n_train >= SMALL_TASK_EXAMPLES else 1,
                 "twice an epoch on a large task, once on a small one")
    patience = pick("patience", 3, "evaluations without a validation-accuracy gain before stopping")
    freeze_words = pick("freeze_word_embeddings", kind == "classification",
                        "AdamW and the dense gradient of the 11.7 M-value word-embedding matrix cost 19 % of a "
                        "CPU step (29 % of a CPU step with fused AdamW); validation accuracy held "
                        "(bench/results/recipe.json)"
                        if kind == "classification" else
                        "not measured on token classification")
    if kind != "classification":
        layers_auto, layers_why = 0, "not measured on token classification"
    elif not freeze_words:
        layers_auto, layers_why = 0, "the word embeddings are trained (set by the user), so nothing below them is frozen"
    else:
        layers_auto, layers_why = FROZEN_LAYERS, (
            f"the embeddings and the {FROZEN_LAYERS} lowest encoder layers stay as the base model has them: backward "
            "stops above them: 19-20 % fewer CPU seconds an epoch, so more epochs in the time budget; validation "
            "accuracy at the default budget +2 and +6 rows of 942 on Banking77 (two seeds), -2 of 941 on HWU64 "
            "(bench/results/recipe.json)")
    frozen_layers = pick("frozen_layers", layers_auto, layers_why)
    why["optimizer_impl"] = "fused AdamW: one kernel over all parameters (its step 0.10 -> 0.02 s on one thread)"
    return Recipe(max_length=int(max_length), batch_size=int(batch_size), learning_rate=float(learning_rate),
                  head_learning_rate=float(head_learning_rate),
                  weight_decay=float(getattr(settings, "weight_decay", 0.01) or 0.0),
                  warmup_ratio=float(getattr(settings, "warmup_ratio", 0.06)), max_epochs=int(epochs),
                  patience=int(patience), evals_per_epoch=int(evals), time_budget_s=loop_budget,
                  head_init="prototypes" if kind == "classification" else "random", why=why,
                  frozen=FROZEN_EMBEDDINGS if freeze_words else (), optimizer_impl="fused",
                  frozen_layers=int(frozen_layers))


def describe(recipe: Recipe) -> str:
    budget = "no time limit" if recipe.time_budget_s is None else f"{recipe.time_budget_s:.0f} s"
    return (f"recipe: max_length {recipe.max_length}, batch {recipe.batch_size}, lr {recipe.learning_rate:g} "
            f"(head {recipe.head_learning_rate:g}, init {recipe.head_init}), up to {recipe.max_epochs} epochs, "
            f"patience {recipe.patience}×{recipe.evals_per_epoch}/epoch, loop budget {budget}"
            + (f", frozen {'+'.join(recipe.frozen)}" if recipe.frozen else "")
            + (f", frozen embeddings + {recipe.frozen_layers} lowest layers" if recipe.frozen_layers else ""))
