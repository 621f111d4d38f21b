"""The dataset, as pure functions over contracts: curate, deduplicate, split, apply reviews.

The snapshot command and the curator worker both use these, so a replayed stream gives the
same dataset as the live one. Nothing here reads a clock, a file or the network, and no result
depends on the order records arrive in (ties break on call_id).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from datetime import datetime, timezone
from typing import Iterable, Optional

from services.common import sample
from services.common.contracts import CapturedCall, ReviewedLabel
from services.common.normalize import Split, input_hash, normalise_input, split_of_hash
from services.common.quick import quick_init

DEFAULT_HOLDOUT_FRACTION = 0.15


def ts_ms(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return int(ts.timestamp() * 1000)


@quick_init  # made per call: services/common/quick.py
@dataclass(frozen=True)
class CuratedCall:
    """One captured call as the dataset sees it."""

    call_id: str
    task: str
    ts_ms: int
    input: str
    normalised_hash: str  # hex sha256 of (task, normalised input)
    split: Split
    label: Optional[str]  # the frontier's parsed answer; None when it did not parse

    @property
    def usable(self) -> bool:
        return self.label is not None

    def as_dict(self) -> dict:
        return asdict(self)


def curate_call(call: CapturedCall, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> CuratedCall:
    """Normalise, hash and split one call; a parse failure keeps no label."""
    usable = call.parse_ok and call.output is not None and call.output != ""
    digest, split = hash_and_split(call.task, call.input, holdout_fraction)
    return CuratedCall(call.call_id, call.task, ts_ms(call.ts), call.input, digest, split,
                       call.output if usable else None)


@lru_cache(maxsize=1 << 15)
def hash_and_split(task: str, text: str, holdout_fraction: float) -> tuple[str, Split]:
    """(hex input hash, split) of an input: pure, so a re-asked input (a hot task's duplicates) is
    normalised and hashed once while it stays among the 32 Ki most recent."""
    digest = input_hash(task, normalise_input(text))
    return digest.hex(), split_of_hash(digest, holdout_fraction)


@dataclass(frozen=True)
class Example:
    """One distinct normalised input of a task: what the trainer learns from or is graded on."""

    call_id: str  # the call whose answer is kept (the latest usable one)
    task: str
    input: str
    label: str  # gold: the reviewed label where reviewed, else the frontier's
    frontier_label: Optional[str]
    reviewed: bool
    normalised_hash: str
    split: Split
    call_ids: tuple[str, ...] = ()  # every call with this normalised input
    ts_ms: int = 0  # when the kept call was captured (epoch ms)


@dataclass
class DedupStats:
    calls: int = 0
    parse_failures: int = 0
    distinct_inputs: int = 0
    duplicate_calls: int = 0  # calls beyond the first of their normalised input
    conflicting_inputs: int = 0  # inputs the frontier answered differently
    unlabelled_inputs: int = 0  # inputs whose every answer failed to parse (and not reviewed)


@dataclass
class Dataset:
    task: str
    examples: list[Example]
    stats: DedupStats
    reviewed_applied: int = 0
    excluded_by_review: int = 0
    label_counts: dict = field(default_factory=dict)

    def split(self, which: Split) -> list[Example]:
        return [e for e in self.examples if e.split == which]


def _latest(calls: list[CuratedCall]) -> CuratedCall:
    return max(calls, key=lambda c: (c.ts_ms, c.call_id))


def group_by_input(calls: Iterable[CuratedCall]) -> dict[str, list[CuratedCall]]:
    """Calls of one task grouped by normalised input; duplicates of a call_id (replays) collapse."""
    by_id: dict[str, CuratedCall] = {}
    for c in calls:
        by_id[c.call_id] = c
    groups: dict[str, list[CuratedCall]] = defaultdict(list)
    for c in by_id.values():
        groups[c.normalised_hash].append(c)
    return groups


def is_conflict(calls: Iterable[CuratedCall]) -> bool:
    return len({c.label for c in calls if c.usable}) > 1


def latest_reviews(reviews: Iterable[ReviewedLabel]) -> dict[str, ReviewedLabel]:
    """The latest review per call_id, in read order (a compacted topic keeps the last one)."""
    out: dict[str, ReviewedLabel] = {}
    for r in reviews:
        out[r.call_id] = r
    return out


def review_for(calls: list[CuratedCall], reviews: dict[str, ReviewedLabel]) -> Optional[ReviewedLabel]:
    """The newest review of any call with this input (verdict 'skip' does not count)."""
    found = [reviews[c.call_id] for c in calls if c.call_id in reviews and reviews[c.call_id].verdict != "skip"]
    return max(found, key=lambda r: (ts_ms(r.ts), r.call_id)) if found else None


def build_dataset(task: str, calls: Iterable[CuratedCall], reviews: dict[str, ReviewedLabel]) -> Dataset:
    """Deduplicate a task's calls, keep the latest usable answer, let reviews override it.

    A reviewed label wins over the frontier's; a review with verdict 'not_in_label_set' removes
    the input; an input that never parsed and was never reviewed is not an example.
    """
    groups = group_by_input(c for c in calls if c.task == task)
    stats = DedupStats()
    examples: list[Example] = []
    applied = excluded = 0
    for digest in sorted(groups):
        group = groups[digest]
        stats.calls += len(group)
        stats.parse_failures += sum(not c.usable for c in group)
        stats.duplicate_calls += len(group) - 1
        stats.conflicting_inputs += is_conflict(group)
        usable = [c for c in group if c.usable]
        kept = _latest(usable) if usable else _latest(group)
        review = review_for(group, reviews)
        if review is not None and review.verdict == "not_in_label_set":
            excluded += 1
            continue
        reviewed = review is not None and review.label is not None
        if not usable and not reviewed:
            stats.unlabelled_inputs += 1
            continue
        applied += reviewed
        examples.append(Example(kept.call_id, task, kept.input, review.label if reviewed else kept.label,
                                kept.label, reviewed, digest, kept.split,
                                tuple(sorted(c.call_id for c in group)), kept.ts_ms))
    stats.distinct_inputs = len(groups)
    return Dataset(task, examples, stats, applied, excluded, label_counts(examples))


def label_counts(examples: list[Example]) -> dict[str, dict[str, int]]:
    """Per split, how many examples carry each label."""
    return {s: dict(sorted(Counter(e.label for e in examples if e.split == s).items())) for s in ("train", "holdout")}


# --- the review queue -------------------------------------------------------------------------

@dataclass(frozen=True)
class ReviewItem:
    call_id: str
    task: str
    input: str
    frontier_label: Optional[str]
    reason: str  # "disagreement" | "low_confidence" | "sample"
    small_output: Optional[str] = None
    confidence: Optional[float] = None
    model_version: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SmallAnswer:
    """What the small model said about a call (from a disagreement or a shadow result)."""

    call_id: str
    output: str
    confidence: float
    model_version: str
    disagrees: bool


def build_review_queue(dataset: Dataset, answers: Iterable[SmallAnswer], *, limit: int = 50,
                       low_confidence: float = 0.6, since_ms: Optional[int] = None) -> list[ReviewItem]:
    """Unreviewed holdout examples to show a person: disagreements first (least confident first),
    then low-confidence shadow results, then a sample stratified by label (round robin over the
    labels, a stable pseudo-random order inside each by input hash).

    With `since_ms` (a task collecting data after a drift), only the holdout captured since then:
    reviews of older items would not count for the retrain."""
    holdout = [e for e in dataset.examples if e.split == "holdout" and not e.reviewed
               and (since_ms is None or e.ts_ms >= since_ms)]
    by_call = {cid: e for e in holdout for cid in e.call_ids}
    best: dict[str, SmallAnswer] = {}
    for a in answers:
        e = by_call.get(a.call_id)
        if e is None:
            continue
        cur = best.get(e.normalised_hash)
        if cur is None or (a.disagrees, -a.confidence, a.call_id) > (cur.disagrees, -cur.confidence, cur.call_id):
            best[e.normalised_hash] = a
    first = sorted(((e, best[e.normalised_hash]) for e in holdout if e.normalised_hash in best
                    and (best[e.normalised_hash].disagrees or best[e.normalised_hash].confidence < low_confidence)),
                   key=lambda p: (not p[1].disagrees, p[1].confidence, p[0].normalised_hash))
    queue = [ReviewItem(e.call_id, e.task, e.input, e.frontier_label,
                        "disagreement" if a.disagrees else "low_confidence", a.output, a.confidence,
                        a.model_version) for e, a in first[:limit]]
    taken = {item.call_id for item in queue}
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in sorted(holdout, key=lambda e: e.normalised_hash):
        if e.call_id not in taken:
            by_label[e.label].append(e)
    labels = sorted(by_label)
    depth = 0
    while len(queue) < limit and any(depth < len(by_label[label]) for label in labels):
        for label in labels:
            if depth < len(by_label[label]) and len(queue) < limit:
                e = by_label[label][depth]
                queue.append(ReviewItem(e.call_id, e.task, e.input, e.frontier_label, "sample"))
        depth += 1
    return queue


# --- live stats of the worker: per source partition, a bounded tally per task ------------------

@dataclass
class Tally:
    """One task's live dataset stats on one source partition: exact counts, and the distinct inputs
    as a hash sample (services/common/sample.py) that merges across partitions, so a task's
    duplicates and conflicts are found without re-keying the calls by input."""

    calls: int = 0
    usable: int = 0
    parse_failures: int = 0
    train: int = 0
    holdout: int = 0
    inputs: dict = field(default_factory=dict)  # 16 hex of the input hash -> [first label, conflict, usable]
    inputs_sampled: float = 1.0
    inputs_cap: int = sample.DEFAULT_CAP

    def add(self, call: CuratedCall) -> None:
        self.calls += 1
        if call.label is not None:  # call.usable
            self.usable += 1
        else:
            self.parse_failures += 1
        if call.split == "holdout":
            self.holdout += 1
        else:
            self.train += 1
        digest = call.normalised_hash[:16]
        if self.inputs_sampled >= 1.0 or sample.fraction(digest) < self.inputs_sampled:  # sample.kept, inlined
            sample.note(self.inputs, digest, call.label)
            if len(self.inputs) > self.inputs_cap:
                self.inputs_sampled = sample.shrink(self.inputs, self.inputs_sampled, self.inputs_cap)

    def merge(self, other: "Tally") -> "Tally":
        return Tally.from_json(self.to_json()).merge_in(other)

    def merge_in(self, other: "Tally") -> "Tally":
        """`merge`, into this tally (no copy of it): for a merged view built from copies."""
        for name in ("calls", "usable", "parse_failures", "train", "holdout"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.inputs_cap += other.inputs_cap  # a merged view keeps what both kept (bounded by the parts)
        self.inputs_sampled = sample.merge(self.inputs, self.inputs_sampled, other.inputs, other.inputs_sampled,
                                           self.inputs_cap)
        return self

    def stats(self) -> dict:
        """calls, usable, parse_failures, train, holdout, inputs, duplicate_calls, conflicting_inputs
        (the last three estimated from the sample when `inputs_sampled` < 1, which it then shows)."""
        inputs = round(len(self.inputs) / self.inputs_sampled)
        out = {"calls": self.calls, "usable": self.usable, "parse_failures": self.parse_failures,
               "train": self.train, "holdout": self.holdout, "inputs": inputs,
               "duplicate_calls": max(0, self.calls - inputs),
               "conflicting_inputs": round(sum(e[1] for e in self.inputs.values()) / self.inputs_sampled)}
        if self.inputs_sampled < 1.0:
            out["inputs_sampled"] = self.inputs_sampled
        return out

    def to_json(self) -> dict:
        return {"calls": self.calls, "usable": self.usable, "parse_failures": self.parse_failures,
                "train": self.train, "holdout": self.holdout, "inputs": {h: list(e) for h, e in self.inputs.items()},
                "inputs_sampled": self.inputs_sampled, "inputs_cap": self.inputs_cap}

    @classmethod
    def from_json(cls, data: dict) -> "Tally":
        return cls(**{**data, "inputs": {h: list(e) for h, e in data.get("inputs", {}).items()}})


def tally_calls(tallies: dict[str, Tally], calls: Iterable[CuratedCall]) -> None:
    """Add curated calls to a partition's tallies (in place)."""
    for c in calls:
        t = tallies.get(c.task)
        if t is None:
            t = tallies[c.task] = Tally()
        t.add(c)


def tallies_json(tallies: dict[str, Tally]) -> dict:
    return {task: t.to_json() for task, t in tallies.items()}


def tallies_from_json(data: dict) -> dict[str, Tally]:
    return {task: Tally.from_json(t) for task, t in data.items()}


def tally_stats(parts: Iterable[dict[str, Tally]]) -> dict[str, dict]:
    """Per task, the stats of several partitions' tallies merged."""
    merged: dict[str, Tally] = {}  # a copy of each task's first tally, the others merged into it
    for tallies in parts:
        for task, t in tallies.items():
            if task in merged:
                merged[task].merge_in(t)
            else:
                merged[task] = Tally.from_json(t.to_json())
    return {task: t.stats() for task, t in sorted(merged.items())}
