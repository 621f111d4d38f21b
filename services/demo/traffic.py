"""The demo's traffic, planned up front from Banking77: which inputs are sent in which phase.

Banking77's own labels are the gold. The intents of the launch (the drift) are kept out of every
phase before it, so no training data can contain them; the test split is used only after the
model was trained (shadow, small mode, drift), so the live figures are on unseen inputs. The drift
sends the launch's Banking77 *train* inputs first and keeps their *test* inputs, with the ordinary
test inputs no phase used, for after the retrain (re-gate), so the retrained model — which learns
from what the drift captured — is judged on inputs it never saw either.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from services.common.contracts import new_id

DRAFT_REPLY_TEMPLATE = ("Please draft a short reply to this customer e-mail.\n\n"
                        "From: a customer\nSubject: question about my account\n\n{text}\n")


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    source: str  # "train" or "test" (Banking77's split)


@dataclass(frozen=True)
class PlannedCall:
    call_id: str
    task: str
    phase: str
    text: str
    gold: Optional[str]  # Banking77's label (None for the open-ended task)
    drift: bool = False


@dataclass(frozen=True)
class TrafficPlan:
    capture: list[PlannedCall]  # before any model: Banking77 train inputs, plus draft-reply calls
    shadow: list[PlannedCall]  # test inputs while the model shadows
    small: list[PlannedCall]  # test inputs in small mode
    drift: list[PlannedCall]  # after the launch: the held-out intents mixed with ordinary traffic
    held_out: tuple[str, ...]
    before_launch: tuple[str, ...]  # the intents in use before the launch: the training label set
    # after the retrain: test inputs no phase sent, the launch's intents among ordinary ones
    regate: list[PlannedCall] = field(default_factory=list)


def read_examples(path: Path, source: str) -> list[Example]:
    with path.open(newline="", encoding="utf-8") as f:
        return [Example(row["text"].strip(), row["category"].strip(), source) for row in csv.DictReader(f)]


def calls_of(examples: list[Example], task: str, phase: str, drift_labels: set[str]) -> list[PlannedCall]:
    return [PlannedCall(new_id(), task, phase, e.text, e.label, e.label in drift_labels) for e in examples]


def plan_traffic(data_dir: Path, task: str, freeform_task: str, *, train_calls: int, freeform_calls: int,
                 shadow_calls: int, small_calls: int, drift_calls: int, drift_share: float,
                 drift_labels: tuple[str, ...], seed: int, intents: Optional[int] = None,
                 regate_calls: int = 0, regate_share: float = 0.2) -> TrafficPlan:
    """Sample every phase's calls (seeded); the launch's intents appear only from the drift phase on.
    `intents` keeps only the first N other intents (in the data's order of first appearance).
    `regate_calls` test inputs not sent before (a `regate_share` of them about the launch's intents,
    as far as there are unused ones) follow the retrain; fewer when the unused test inputs run out."""
    rng = random.Random(seed)
    held = set(drift_labels)
    train = read_examples(data_dir / "train.csv", "train")
    test = read_examples(data_dir / "test.csv", "test")
    unknown = held - {e.label for e in train}
    if unknown:
        raise ValueError(f"drift label(s) not in Banking77: {', '.join(sorted(unknown))}")
    if intents:
        order = [label for label in dict.fromkeys(e.label for e in train) if label not in held][:intents]
        train = [e for e in train if e.label in held or e.label in order]
        test = [e for e in test if e.label in held or e.label in order]
    before = [e for e in train if e.label not in held]
    rng.shuffle(before)
    capture = calls_of(before[:train_calls], task, "capture", held)
    replies = rng.sample(before[train_calls:] or before, min(freeform_calls, len(before)))
    drafts = [PlannedCall(new_id(), freeform_task, "capture", DRAFT_REPLY_TEMPLATE.format(text=e.text), None)
              for e in replies]
    capture = interleave(capture, drafts, rng)

    ordinary = [e for e in test if e.label not in held]
    rng.shuffle(ordinary)
    shadow = calls_of(ordinary[:shadow_calls], task, "shadow", held)
    small = calls_of(ordinary[shadow_calls:shadow_calls + small_calls], task, "small", held)

    # After the launch: inputs of the new intents (none was ever sent; Banking77's train inputs
    # first, its test inputs only when those run out), mixed with ordinary traffic; ordinary test
    # inputs already sent are asked again, as real users do.
    launch_train = [e for e in train if e.label in held]
    launch_test = [e for e in test if e.label in held]
    rng.shuffle(launch_train)
    rng.shuffle(launch_test)
    launch = launch_train + launch_test
    n_new = min(len(launch), round(drift_calls * drift_share))
    n_old = drift_calls - n_new
    used = ordinary[:shadow_calls + small_calls]
    repeat = [used[i % len(used)] for i in range(n_old)] if used else []
    drift = calls_of(launch[:n_new], task, "drift", held) + calls_of(rng.sample(repeat, len(repeat)), task, "drift", held)
    rng.shuffle(drift)

    # After the retrain: test inputs no phase sent, the launch's intents now part of everyday traffic.
    fresh_launch = [e for e in launch[n_new:] if e.source == "test"]
    fresh_ordinary = ordinary[shadow_calls + small_calls:]
    r_new = min(len(fresh_launch), round(regate_calls * regate_share))
    r_old = min(len(fresh_ordinary), regate_calls - r_new)
    regate = (calls_of(fresh_launch[:r_new], task, "retrain-shadow", held)
              + calls_of(fresh_ordinary[:r_old], task, "retrain-shadow", held))
    rng.shuffle(regate)
    return TrafficPlan(capture, shadow, small, drift, tuple(sorted(held)),
                       tuple(sorted({e.label for e in before})), regate)


def interleave(many: list[PlannedCall], few: list[PlannedCall], rng: random.Random) -> list[PlannedCall]:
    """`few` spread at random positions through `many` (a low-volume task among a busy one)."""
    out = list(many)
    for call in few:
        out.insert(rng.randrange(len(out) + 1), call)
    return out
