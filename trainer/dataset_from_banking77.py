"""Build a dataset snapshot straight from an intent data set (Banking77, HWU64: text,category CSVs).

Banking77's own labels are the gold. The "frontier" labels are the simulated frontier model's
answers (`services.frontier_sim.oracle`, never a real model): deterministic per input, wrong on
confusable labels, at a configured accuracy. Answers a strict parser would refuse are dropped,
as the curator drops them. A configurable share of the holdout, picked by input hash, is
"reviewed": its gold label is the true label; everything else carries the frontier's answer as
its label, as the curator's snapshots do. Official train/test become train/holdout,
deduplicated by normalised input.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from services.common.normalize import input_hash, normalise_input
from services.frontier_sim.oracle import ClassificationOracle, Example
from trainer.snapshot import Split, write_snapshot

# The simulator's own defaults (services.frontier_sim.settings), so snapshots match its answers.
FRONTIER_ACCURACY = 0.92
FRONTIER_SEED = 0


def read_banking77(data_dir: Path) -> tuple[list[str], list[Example], list[Example]]:
    """(labels in categories.json order, train examples, test examples)."""
    labels = json.loads((data_dir / "categories.json").read_text())

    def read(name: str) -> list[Example]:
        with (data_dir / name).open(newline="", encoding="utf-8") as f:
            return [Example(row["text"], row["category"]) for row in csv.DictReader(f)]

    return labels, read("train.csv"), read("test.csv")


def _unit(task: str, text: str, purpose: str) -> float:
    """A uniform number in [0, 1) fixed by (task, normalised input, purpose)."""
    digest = hashlib.sha256(f"{purpose}\x00".encode() + input_hash(task, normalise_input(text))).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def frontier_answers(task: str, labels: list[str], examples: list[Example], accuracy: float,
                     seed: int) -> tuple[dict[str, Optional[str]], dict[str, Any]]:
    """The simulated frontier's label per normalised input (None: a malformed answer), and a report."""
    oracle = ClassificationOracle(task, labels, examples, accuracy=accuracy, seed=seed)
    answers, right, malformed = {}, 0, 0
    for e in examples:
        key = normalise_input(e.text)
        if key in answers:
            continue
        verdict = oracle.answer(e.text)
        answers[key] = None if verdict.malformed else verdict.label
        malformed += verdict.malformed
        right += not verdict.wrong
    return answers, {"kind": "simulated frontier (services.frontier_sim.oracle; not a real model)",
                     "configured_accuracy": accuracy, "seed": seed, "realised_accuracy": right / max(len(answers), 1),
                     "malformed_dropped": malformed}


def _cap_per_label(examples: list[Example], cap: Optional[int]) -> list[Example]:
    if cap is None:
        return examples
    seen: dict[str, int] = {}
    kept = []
    for e in examples:
        if seen.get(e.label, 0) < cap:
            seen[e.label] = seen.get(e.label, 0) + 1
            kept.append(e)
    return kept


def _dedupe(task: str, examples: list[Example], exclude: set[str]) -> tuple[list[Example], list[str]]:
    kept, hashes = [], []
    for e in examples:
        h = input_hash(task, normalise_input(e.text)).hex()
        if h not in exclude:
            exclude.add(h)
            kept.append(e)
            hashes.append(h)
    return kept, hashes


OUT_OF_SCOPE_LABEL = "other"


def out_of_scope_intents(task: str, labels: list[str], share: float) -> tuple[list[str], list[str]]:
    """(seen, unseen): a seeded `share` of the labels taken out of the task's label set. Inputs of
    the seen half reach the train split with the frontier's "other"; the unseen half appears only
    in the holdout, as intents nobody has ever shown the small model."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"out_of_scope_share must be in [0, 1), got {share}")
    k = int(round(share * len(labels)))
    picked = sorted(labels, key=lambda label: _unit(task, label, "out-of-scope"))[:k]
    return sorted(picked[::2]), sorted(picked[1::2])


def build_banking77_snapshot(datasets_dir: Path, task: str, data_dir: Path, *, snapshot_id: Optional[str] = None,
                             labels_subset: Optional[int] = None, per_label_train: Optional[int] = None,
                             per_label_holdout: Optional[int] = None, reviewed_share: float = 0.3,
                             frontier_accuracy: float = FRONTIER_ACCURACY, frontier_seed: int = FRONTIER_SEED,
                             out_of_scope_share: float = 0.0, reviewed_train: Optional[set[str]] = None) -> Path:
    """Write a snapshot of an intent data set (text,category CSVs: Banking77, HWU64; official
    train/test as train/holdout, deduplicated by normalised input) with simulated frontier labels
    and a reviewed share of the holdout; `out_of_scope_share` of the intents become inputs outside
    the task's label set, which the frontier answers with "other". `reviewed_train` (normalised
    hashes) are train rows a person checked (e.g. the labels a run disputed): they carry the true label."""
    if not 0.0 <= reviewed_share <= 1.0:
        raise ValueError(f"reviewed_share must be in [0, 1], got {reviewed_share}")
    labels, train_rows, test_rows = read_banking77(data_dir)
    if labels_subset is not None:
        labels = labels[:labels_subset]
    seen_oos, unseen_oos = out_of_scope_intents(task, labels, out_of_scope_share)
    oos = set(seen_oos) | set(unseen_oos)
    keep = set(labels)
    train_rows = _cap_per_label([e for e in train_rows if e.label in keep and e.label not in unseen_oos],
                                per_label_train)
    test_rows = _cap_per_label([e for e in test_rows if e.label in keep], per_label_holdout)
    labels = [label for label in labels if label not in oos]
    if oos:
        train_rows = [Example(e.text, OUT_OF_SCOPE_LABEL) if e.label in oos else e for e in train_rows]
        test_rows = [Example(e.text, OUT_OF_SCOPE_LABEL) if e.label in oos else e for e in test_rows]
    answers, report = frontier_answers(task, labels + ([OUT_OF_SCOPE_LABEL] if oos else []),
                                       train_rows + test_rows, frontier_accuracy, frontier_seed)
    train_rows = [e for e in train_rows if answers[normalise_input(e.text)] is not None]
    test_rows = [e for e in test_rows if answers[normalise_input(e.text)] is not None]
    seen: set[str] = set()
    train_rows, train_hashes = _dedupe(task, train_rows, seen)
    n_test = len(test_rows)
    test_rows, test_hashes = _dedupe(task, test_rows, seen)
    train_answers = [answers[normalise_input(e.text)] for e in train_rows]
    test_answers = [answers[normalise_input(e.text)] for e in test_rows]

    reviewed_train = set(reviewed_train or ())
    checked = [h in reviewed_train for h in train_hashes]
    train = Split([f"b77-train-{h[:16]}" for h in train_hashes], [e.text for e in train_rows],
                  [e.label if r else a for e, r, a in zip(train_rows, checked, train_answers)],
                  list(train_answers), checked, train_hashes)
    reviewed = [_unit(task, e.text, "reviewed") < reviewed_share for e in test_rows]
    holdout = Split([f"b77-holdout-{h[:16]}" for h in test_hashes], [e.text for e in test_rows],
                    [e.label if r else a for e, r, a in zip(test_rows, reviewed, test_answers)],
                    test_answers, reviewed, test_hashes)
    snapshot_id = snapshot_id or _snapshot_id(task, train_hashes + test_hashes + sorted(reviewed_train))
    source = {"generator": "trainer.dataset_from_banking77", "data": str(data_dir),
              "frontier": report, "reviewed_share": reviewed_share, "labels_subset": labels_subset,
              "per_label_train": per_label_train, "per_label_holdout": per_label_holdout,
              "reviewed_train": {"rows": sum(checked), "label_changed": sum(
                  t != a for t, a, r in zip(train.label, train_answers, checked) if r)},
              "holdout_dropped_as_duplicates": n_test - len(test_rows),
              "out_of_scope": {"share": out_of_scope_share, "seen_intents": seen_oos, "unseen_intents": unseen_oos}}
    return write_snapshot(datasets_dir, task, snapshot_id, labels, train, holdout, source,
                          out_of_scope_label=OUT_OF_SCOPE_LABEL if oos else None)


def _snapshot_id(task: str, hashes: list[str]) -> str:
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    content = hashlib.sha256("".join(hashes).encode()).hexdigest()[:8]
    return f"{stamp}-b77-{content}"
