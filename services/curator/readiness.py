"""Is a task's data ready for the gate? One answer for the controller, the trainer and the review page.

The offline gate needs `min_reviewed_holdout` holdout items that a person reviewed, and a
classification model cannot learn a label that has no training example, nor be graded fairly on
holdout items whose gold label it never saw. `readiness` says what is missing, in counts a person
can act on ("120 more reviewed holdout items"), from a snapshot's manifest or from a curated
dataset (the same numbers, since the manifest is written from that dataset).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

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
