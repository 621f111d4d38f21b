"""Is a task's data ready for the gate? One answer for the controller, the trainer and the review page.

The offline gate needs `min_reviewed_holdout` holdout items that a person reviewed, and a
classification model cannot learn a label that has no training example, nor be graded fairly on
holdout items whose gold label it never saw. `readiness` says what is missing, in counts a person
can act on ("120 more reviewed holdout items"), from a snapshot's manifest or from a curated
dataset (the same numbers, since the manifest is written from that dataset). After a drift
demotion, `drift_readiness` says whether enough was captured since then to retrain on.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any, Mapping, Optional

from services.curator.logic import Dataset


@dataclass(frozen=True)
class Readiness:
    task: str
    reviewed_holdout: int
    min_reviewed_holdout: int
    train_examples: int
    holdout_labels_without_examples: tuple[str, ...] = ()  # gold holdout labels absent from train

    @property
    def reviews_needed(self) -> int:
        return max(0, self.min_reviewed_holdout - self.reviewed_holdout)

    @property
    def problems(self) -> tuple[str, ...]:
        out = []
        if self.reviews_needed:
            out.append(f"too few reviewed holdout items: {self.reviewed_holdout}, the gate needs "
                       f"{self.min_reviewed_holdout} ({self.reviews_needed} more)")
        if self.train_examples == 0:
            out.append("no training examples")
        if self.holdout_labels_without_examples:
            shown = ", ".join(self.holdout_labels_without_examples[:10])
            more = len(self.holdout_labels_without_examples) - 10
            out.append(f"{len(self.holdout_labels_without_examples)} holdout labels without a training example: "
                       f"{shown}{f' (+{more} more)' if more > 0 else ''}")
        return tuple(out)

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        return "; ".join(self.problems) or (f"{self.reviewed_holdout} reviewed holdout items "
                                            f"(the gate needs {self.min_reviewed_holdout})")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"reviews_needed": self.reviews_needed, "ready": self.ready,
                               "problems": list(self.problems)}


def readiness(task: str, kind: str, reviewed_holdout: int, label_distribution: Mapping[str, Mapping[str, int]],
              min_reviewed_holdout: int) -> Readiness:
    """What the gate lacks, from the reviewed holdout count and the per-split label counts (pure)."""
    train = {label for label, n in label_distribution.get("train", {}).items() if n > 0}
    holdout = {label for label, n in label_distribution.get("holdout", {}).items() if n > 0}
    unseen = tuple(sorted(holdout - train)) if kind == "classification" else ()
    return Readiness(task, reviewed_holdout, min_reviewed_holdout,
                     sum(label_distribution.get("train", {}).values()), unseen)


def readiness_of_manifest(manifest: Mapping[str, Any], kind: str, min_reviewed_holdout: int) -> Readiness:
    return readiness(manifest["task"], kind, int(manifest["reviewed"]["holdout"]), manifest["label_distribution"],
                     min_reviewed_holdout)


def readiness_of_dataset(dataset: Dataset, kind: str, min_reviewed_holdout: int) -> Readiness:
    reviewed = sum(1 for e in dataset.examples if e.split == "holdout" and e.reviewed)
    return readiness(dataset.task, kind, reviewed, dataset.label_counts, min_reviewed_holdout)


# --- after a drift: has enough been captured since the demotion to retrain on? ------------------

# A label counts as part of the traffic since the drift once it holds this share of an even split
# over the task's labels (half of 1/labels): a stray frontier answer does not hold the retrain up.
EVEN_SHARE = 0.5
# A label the traffic moved to: its share since the drift is at least this multiple of its share before.
GROWTH = 2.0
# The examples a label the model hardly saw needs, when not set: as many as the median label had
# before the drift, within these bounds (the trainer's label prototypes average up to 64).
MIN_TRAIN_BOUNDS = (10, 50)


@dataclass(frozen=True)
class DriftReadiness:
    """What was captured since a task was demoted for drift, against what a retrain needs.

    A retrain waits until (1) every label the traffic moved to — a real part of the traffic since
    the drift (EVEN_SHARE) and at least GROWTH times its share before it — has
    `min_train_per_label` training examples, and (2) the reviewed holdout gained
    `min_reviewed_since` items since the drift: each of those labels' even share of the gate's
    minimum (min_holdout / labels, as a first graduation gives every label), at least the shadow
    gate's reviewed minimum.
    """

    task: str
    since_ms: int
    calls_since: int  # distinct inputs captured since the drift (the latest call of each)
    answered_since: dict[str, int]  # the frontier's answers since the drift, per label (inputs)
    min_train_per_label: int
    short_labels: dict[str, int]  # label -> training examples it has now, for labels below the minimum
    new_labels: tuple[str, ...]  # the labels the traffic moved to since the drift
    new_share: float  # their share of the answers since the drift
    reviewed_since: int
    min_reviewed_since: int

    @property
    def reviews_needed(self) -> int:
        return max(0, self.min_reviewed_since - self.reviewed_since)

    @property
    def ready(self) -> bool:
        return not self.short_labels and not self.reviews_needed

    @property
    def reason(self) -> str:
        short = ", ".join(f"{label} {n} of {self.min_train_per_label}"
                          for label, n in sorted(self.short_labels.items())[:8])
        more = len(self.short_labels) - 8
        parts = [f"{self.calls_since} inputs since the drift"]
        if self.short_labels:
            parts.append(f"training examples of the labels the traffic moved to: {short}{f' (+{more} more)' if more > 0 else ''}")
        parts.append(f"reviewed holdout items since the drift: {self.reviewed_since} of {self.min_reviewed_since}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"new_labels": list(self.new_labels), "reviews_needed": self.reviews_needed,
                               "ready": self.ready}


def drift_readiness(dataset: Dataset, since_ms: int, *, min_reviewed_holdout: int, min_reviewed_floor: int,
                    labels: int = 0, min_train_per_label: Optional[int] = None,
                    min_reviewed_since: Optional[int] = None) -> DriftReadiness:
    """Whether the data captured since `since_ms` (the demotion) is enough to retrain on (pure).

    `labels`: how many labels the task has (0: those seen); `min_train_per_label` and
    `min_reviewed_since` override the derived minimums (GRADUATE_CONTROLLER_DRIFT_*).
    """
    recent = [e for e in dataset.examples if e.ts_ms >= since_ms]
    answered = Counter(e.frontier_label for e in recent if e.frontier_label is not None)
    before = Counter(e.label for e in dataset.examples if e.split == "train" and e.ts_ms < since_ms)
    if min_train_per_label is None:
        low, high = MIN_TRAIN_BOUNDS
        min_train_per_label = min(high, max(low, int(median(before.values())) if before else low))
    total = sum(answered.values())
    n_labels = max(labels, len(answered | before), 1)
    even = EVEN_SHARE / n_labels
    before_total = sum(before.values())
    new = tuple(sorted(label for label, n in answered.items()
                       if n / total >= even and n / total >= GROWTH * before[label] / max(before_total, 1)))
    train_now = dataset.label_counts.get("train", {})
    short = {label: int(train_now.get(label, 0)) for label in new if train_now.get(label, 0) < min_train_per_label}
    share = sum(answered[label] for label in new) / total if total else 0.0
    if min_reviewed_since is None:
        min_reviewed_since = max(min_reviewed_floor, len(new) * math.ceil(min_reviewed_holdout / n_labels))
    reviewed = sum(1 for e in recent if e.split == "holdout" and e.reviewed)
    return DriftReadiness(dataset.task, since_ms, len(recent), dict(sorted(answered.items())), min_train_per_label,
                          short, new, round(share, 4), reviewed, min_reviewed_since)
