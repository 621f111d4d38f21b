"""The judge's arithmetic, with no broker: join a shadow result with the frontier's answer and a
reviewed label, decide agreement, and keep per (task, model version) statistics.

Idempotent by construction: the state holds one verdict per (call_id, model version) and one
review per call_id, and every statistic is the sum of the current records' contributions (a
replayed result changes nothing; a changed review or threshold swaps the old contribution for
the new one). `JudgeState.load` rebuilds everything from the persisted records.

Extraction tasks answer JSON objects: two answers are the same when every field's value is the
same after normalisation (Unicode NFKC, case folded, whitespace collapsed, as
services/common/normalize.py does for inputs; an empty string is no value). A disagreement names
the fields that differ, and the statistics count agreement per field as well
(ShadowStats.confusion_json["fields"]).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from services.common.contracts import Disagreement, PairedCounts, ReviewedLabel, ShadowResult, ShadowStats
from services.common.normalize import normalise_input

Group = tuple[str, str]  # (task, model_version)
TOP_CONFUSION_PAIRS = 10
_PAIR = "pair"
_FIELD = "field"
FIELD_COUNTS = ("compared", "agreed", "kept", "kept_agreed", "reviewed", "small_correct_reviewed",
                "frontier_correct_reviewed")


@dataclass(frozen=True)
class Verdict:
    """What the judge keeps of one shadow result."""

    call_id: str
    task: str
    model_version: str
    small_output: str
    frontier_output: str | None
    confidence: float

    @property
    def group(self) -> Group:
        return (self.task, self.model_version)


@dataclass(frozen=True)
class Review:
    """A person's answer for a call; `label` None means "not in the label set" (both sides wrong)."""

    label: str | None


def field_value(value: Any) -> Optional[str]:
    """A field's value as compared: normalised text (NFKC, case folded, whitespace collapsed);
    None for no value (null, missing, or only whitespace)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return normalise_input(text) or None


def fields_of(answer: Optional[str]) -> Optional[dict[str, Optional[str]]]:
    """An extraction answer's fields, normalised; None when the answer is not a JSON object."""
    if not answer or answer.lstrip()[:1] != "{":
        return None
    try:
        obj = json.loads(answer)
    except json.JSONDecodeError:
        return None
    return {k: field_value(v) for k, v in obj.items()} if isinstance(obj, dict) else None


def differing_fields(a: Optional[str], b: Optional[str]) -> list[str]:
    """The fields on which two JSON-object answers differ (a field one of them lacks counts as
    null), sorted; [] when either is not a JSON object (a classification label)."""
    fa, fb = fields_of(a), fields_of(b)
    if fa is None or fb is None:
        return []
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def same_output(a: str | None, b: str | None) -> bool:
    """Equal answers: the same label, or JSON objects whose fields are equal once normalised
    (extraction tasks)."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    fa, fb = fields_of(a), fields_of(b)
    if fa is None or fb is None:
        return False
    return not any(fa.get(k) != fb.get(k) for k in set(fa) | set(fb))


def verdict_of(result: ShadowResult) -> Verdict:
    return Verdict(result.call_id, result.task, result.model_version, result.output,
                   result.frontier_output, result.confidence)


def review_of(label: ReviewedLabel) -> Review | None:
    """The review a label stands for; None when the reviewer skipped (no review)."""
    if label.verdict == "skip":
        return None
    if label.verdict == "not_in_label_set":
        return Review(None)
    return Review(label.label)


def disagreement_of(result: ShadowResult, review: Review | None) -> Disagreement | None:
    """The disagreement to publish for a result, or None when both sides agree (or there is no
    parsed frontier answer to compare with)."""
    if result.frontier_output is None or same_output(result.output, result.frontier_output):
        return None
    return Disagreement(call_id=result.call_id, task=result.task, model_version=result.model_version,
                        input=result.input, frontier_output=result.frontier_output, small_output=result.output,
                        confidence=result.confidence, reviewed_label=review.label if review else None,
                        differing_fields=differing_fields(result.output, result.frontier_output))


def paired_bucket(small_correct: bool, frontier_correct: bool) -> str:
    if small_correct and frontier_correct:
        return "both_correct"
    if small_correct:
        return "small_only"
    if frontier_correct:
        return "frontier_only"
    return "neither"


def contribution(verdict: Verdict, review: Review | None, threshold: float | None) -> Counter:
    """What one result adds to its group's statistics.

    compared: there is a parsed frontier answer; kept: confidence at or above the threshold (none
    without a threshold); reviewed: compared and a person reviewed the call.
    """
    c: Counter = Counter()
    if verdict.frontier_output is None:
        return c
    agreed = same_output(verdict.small_output, verdict.frontier_output)
    c["compared"] += 1
    c["agreed"] += agreed
    if threshold is not None and verdict.confidence >= threshold:
        c["kept"] += 1
        c["kept_agreed"] += agreed
    if not agreed:
        c[(_PAIR, verdict.frontier_output, verdict.small_output)] += 1
    if review is not None:
        small_ok = same_output(verdict.small_output, review.label)
        frontier_ok = same_output(verdict.frontier_output, review.label)
        c["reviewed"] += 1
        c["small_correct_reviewed"] += small_ok
        c["frontier_correct_reviewed"] += frontier_ok
        c[paired_bucket(small_ok, frontier_ok)] += 1
    c.update(field_contribution(verdict, review, threshold))
    return c


def field_contribution(verdict: Verdict, review: Review | None, threshold: float | None) -> Counter:
    """Per field of an extraction answer: compared, agreed, kept, kept_agreed and, against a
    reviewed answer, reviewed / small_correct_reviewed / frontier_correct_reviewed (a review
    "not in the label set" has no fields to grade). Empty for classification."""
    c: Counter = Counter()
    small, frontier = fields_of(verdict.small_output), fields_of(verdict.frontier_output)
    if small is None or frontier is None:
        return c
    gold = fields_of(review.label) if review is not None else None
    kept = threshold is not None and verdict.confidence >= threshold
    for name in set(small) | set(frontier):
        agreed = small.get(name) == frontier.get(name)
        c[(_FIELD, name, "compared")] += 1
        c[(_FIELD, name, "agreed")] += agreed
        if kept:
            c[(_FIELD, name, "kept")] += 1
            c[(_FIELD, name, "kept_agreed")] += agreed
        if gold is not None:
            c[(_FIELD, name, "reviewed")] += 1
            c[(_FIELD, name, "small_correct_reviewed")] += small.get(name) == gold.get(name)
            c[(_FIELD, name, "frontier_correct_reviewed")] += frontier.get(name) == gold.get(name)
    return c


def field_counts(totals: Counter) -> dict[str, dict[str, int]]:
    """Per field (sorted): the counts of FIELD_COUNTS; only fields compared at least once."""
    out: dict[str, dict[str, int]] = {}
    for key, n in totals.items():
        if isinstance(key, tuple) and key[0] == _FIELD:
            out.setdefault(key[1], dict.fromkeys(FIELD_COUNTS, 0))[key[2]] = n
    return {name: counts for name, counts in sorted(out.items()) if counts["compared"] > 0}


def confusion_pairs(totals: Counter, top: int = TOP_CONFUSION_PAIRS) -> list[dict]:
    """The most frequent (frontier, small) disagreement pairs, most frequent first."""
    pairs = [(k[1], k[2], n) for k, n in totals.items() if isinstance(k, tuple) and k[0] == _PAIR and n > 0]
    pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    return [{"frontier": f, "small": s, "count": n} for f, s, n in pairs[:top]]


def stats_of(group: Group, totals: Counter, threshold: float | None) -> ShadowStats:
    task, version = group
    return ShadowStats(
        task=task, model_version=version, compared=totals["compared"], agreed=totals["agreed"],
        kept=totals["kept"], kept_agreed=totals["kept_agreed"], reviewed=totals["reviewed"],
        small_correct_reviewed=totals["small_correct_reviewed"],
        frontier_correct_reviewed=totals["frontier_correct_reviewed"],
        paired=PairedCounts(both_correct=totals["both_correct"], small_only=totals["small_only"],
                            frontier_only=totals["frontier_only"], neither=totals["neither"]),
        threshold=threshold, confusion_json=confusion_json(totals))


def confusion_json(totals: Counter) -> str:
    """{"pairs": the top disagreement pairs} and, for an extraction task, {"fields": per-field counts}."""
    body: dict[str, Any] = {"pairs": confusion_pairs(totals)}
    fields = field_counts(totals)
    if fields:
        body["fields"] = fields
    return json.dumps(body, separators=(",", ":"))


ThresholdLookup = Callable[[str, str], "float | None"]


@dataclass
class JudgeState:
    """Every verdict and review the judge holds, and the statistics they sum to."""

    threshold_of: ThresholdLookup = lambda task, version: None  # noqa: E731
    verdicts: dict[str, dict[str, Verdict]] = field(default_factory=dict)  # call_id -> version -> verdict
    reviews: dict[str, Review] = field(default_factory=dict)
    totals: dict[Group, Counter] = field(default_factory=dict)
    thresholds: dict[Group, float | None] = field(default_factory=dict)
    members: dict[Group, set[str]] = field(default_factory=dict)

    def _add(self, verdict: Verdict, sign: int) -> None:
        group = verdict.group
        if group not in self.totals:
            self.totals[group] = Counter()
            self.thresholds[group] = self.threshold_of(*group)
            self.members[group] = set()
        c = contribution(verdict, self.reviews.get(verdict.call_id), self.thresholds[group])
        if sign > 0:
            self.totals[group].update(c)
        else:
            self.totals[group].subtract(c)

    def seen(self, call_id: str, model_version: str) -> bool:
        return model_version in self.verdicts.get(call_id, {})

    def apply_result(self, result: ShadowResult) -> bool:
        """Count a shadow result once; False (and no change) when this call and version were seen."""
        if self.seen(result.call_id, result.model_version):
            return False
        verdict = verdict_of(result)
        self.verdicts.setdefault(result.call_id, {})[result.model_version] = verdict
        self._add(verdict, +1)
        self.members[verdict.group].add(result.call_id)
        return True

    def apply_review(self, label: ReviewedLabel) -> set[Group]:
        """Set (or replace, or with a skip remove) the review of a call; the groups that changed."""
        review = review_of(label)
        if self.reviews.get(label.call_id) == review:
            return set()
        touched = list(self.verdicts.get(label.call_id, {}).values())
        for verdict in touched:
            self._add(verdict, -1)
        if review is None:
            self.reviews.pop(label.call_id, None)
        else:
            self.reviews[label.call_id] = review
        for verdict in touched:
            self._add(verdict, +1)
        return {v.group for v in touched}

    def refresh_thresholds(self) -> set[Group]:
        """Recount the groups whose threshold changed (a new routing decision or registration)."""
        changed = set()
        for group, old in list(self.thresholds.items()):
            new = self.threshold_of(*group)
            if new == old:
                continue
            changed.add(group)
            self.thresholds[group] = new
            totals: Counter = Counter()
            for call_id in self.members[group]:
                verdict = self.verdicts[call_id][group[1]]
                totals.update(contribution(verdict, self.reviews.get(call_id), new))
            self.totals[group] = totals
        return changed

    def stats(self, group: Group) -> ShadowStats:
        return stats_of(group, self.totals.get(group, Counter()), self.thresholds.get(group))

    def groups(self) -> list[Group]:
        return sorted(self.totals)

    # Persistence: one JSON record per call_id (the judge's faust table holds these).
    def record(self, call_id: str) -> dict:
        review = self.reviews.get(call_id)
        return {"results": {v.model_version: [v.task, v.small_output, v.frontier_output, v.confidence]
                            for v in self.verdicts.get(call_id, {}).values()},
                "review": None if review is None else {"label": review.label}}

    def load_record(self, call_id: str, record: dict) -> None:
        review = record.get("review")
        if review is not None:
            self.reviews[call_id] = Review(review["label"])
        for version, (task, small, frontier, confidence) in record.get("results", {}).items():
            verdict = Verdict(call_id, task, version, small, frontier, confidence)
            self.verdicts.setdefault(call_id, {})[version] = verdict
            self._add(verdict, +1)
            self.members[verdict.group].add(call_id)

    @classmethod
    def load(cls, records: Iterable[tuple[str, dict]], threshold_of: ThresholdLookup) -> "JudgeState":
        state = cls(threshold_of=threshold_of)
        for call_id, record in records:
            state.load_record(call_id, record)
        return state
