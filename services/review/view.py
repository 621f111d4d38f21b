"""What the review page shows, as plain state fed one record at a time (no broker, no clock).

The follower (topics.py) feeds every record of the followed topics to `ReviewView.apply`; the page
reads queues, items and task summaries off it. The queue is the curator's (`build_review_queue`
over `dataset_of`, the dataset topic's records merged per input), so the page and `graduate dataset
review-queue` agree. It reads the dataset topic the curator writes (one record per distinct input
and captured partition), not the captured calls: work and memory follow the distinct holdout
inputs, not the calls. Memory: the dataset records of each task's holdout inputs (the queue is
drawn from them; a train input's record is read and dropped), the forgotten inputs, the small
model's answers on holdout inputs, the latest review of every call, and bounded windows of
disagreements, routing history, shadow statistics and fallback-rate buckets.

It also follows the models topic for one thing: the train labels the newest model of a task
disputes (`label_review` in its metrics, the trainer's list of likeliest label errors, at most
`MAX_DISPUTED` per task). They stay "to check" until a review names their input hash or call id;
a forgotten input leaves the list.
"""
from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, Callable, Optional

from services.common import catalog
from services.common.contracts import (Contract, DatasetForgotten, DatasetRecord, Disagreement, ModelRegistered,
                                       ReviewedLabel, RouterOutcome, RoutingDecision, ShadowResult, ShadowStats,
                                       version_key)
from services.common.normalize import split_of, split_of_hash
from services.curator.dataset import Input, dataset_of, merge_shards
from services.curator.logic import Dataset, ReviewItem, SmallAnswer, build_review_queue
from services.judge.logic import same_output

MAX_OUTCOME_BUCKETS = 7 * 24 * 60  # a week of one-minute buckets
MAX_DISPUTED = 500  # the trainer lists at most this many; more is not kept


@dataclass(frozen=True)
class Item:
    """One call as the reviewer sees it, with its latest review (None when never reviewed)."""

    call_id: str
    task: str
    input: str
    frontier_label: Optional[str]
    reason: str  # disagreement | low_confidence | sample | reviewed | known
    small_output: Optional[str] = None
    confidence: Optional[float] = None
    model_version: Optional[str] = None
    review: Optional[ReviewedLabel] = None
    normalised_hash: Optional[str] = None  # set where the page knows it without hashing the input


@dataclass(frozen=True)
class DisputedLabel:
    """A train row whose label (the frontier's answer it was trained on) the model disputes, as the
    trainer listed it in `label_review`."""

    call_id: str
    normalised_hash: str
    input: str
    label: str
    frontier_label: Optional[str]
    model_label: str
    label_probability: Optional[float]
    model_probability: Optional[float]


@dataclass(frozen=True)
class Disputed:
    """The newest model's disputed train labels of a task, each with its latest review (None: to check)."""

    model_version: Optional[str]
    disputed: int  # rows the model disputed, listed or not
    listed: int
    items: list[tuple[DisputedLabel, Optional[ReviewedLabel]]]

    @property
    def to_check(self) -> list[DisputedLabel]:
        return [d for d, review in self.items if review is None]

    @cached_property
    def reviews(self) -> dict[str, Optional[ReviewedLabel]]:
        """call_id -> the item's review (None: to check)."""
        return {d.call_id: review for d, review in self.items}


@dataclass(frozen=True)
class Positioned:
    """The latest review of a call and where it was read (None: applied before the read caught up)."""

    review: ReviewedLabel
    partition: Optional[int]
    offset: Optional[int]


@dataclass
class TaskView:
    holdout: dict[str, dict[int, DatasetRecord]] = field(default_factory=dict)  # input hash -> partition -> record
    inputs: dict[str, Input] = field(default_factory=dict)  # input hash -> its shards merged
    by_call: dict[str, str] = field(default_factory=dict)  # a holdout input's latest call ids -> its hash
    forgotten: set[str] = field(default_factory=set)  # input hashes deleted by `graduate dataset forget`
    holdout_calls: int = 0  # calls of the holdout inputs (as the dataset records count them)
    parse_failures: int = 0  # of those, answers that did not parse
    frontier_labels: Counter = field(default_factory=Counter)  # holdout inputs per kept frontier label
    answers: dict[str, dict[str, SmallAnswer]] = field(default_factory=dict)  # call_id -> version -> answer
    disagreements: "OrderedDict[str, Disagreement]" = field(default_factory=OrderedDict)
    reviews: dict[str, Positioned] = field(default_factory=dict)
    decision: Optional[RoutingDecision] = None
    history: deque = field(default_factory=deque)
    stats: dict[str, deque] = field(default_factory=dict)  # model version -> ShadowStats in read order
    outcomes: dict[int, list[int]] = field(default_factory=dict)  # bucket start (epoch s) -> [small mode, fallback]
    version: int = 0  # bumped by every change the queue can see
    cached: dict[tuple, "Cached"] = field(default_factory=dict)
    model_version: Optional[str] = None  # the newest registration's, whose disputed labels are kept
    disputed_counts: Optional[tuple[int, int]] = None  # (disputed, listed); None: the newest has no label_review
    disputed: dict[str, DisputedLabel] = field(default_factory=dict)  # call_id -> item, in the listed order


@dataclass(frozen=True)
class Cached:
    version: int
    at: float
    value: Any


def epoch_s(ts: datetime) -> float:
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


class ReviewView:
    """Every followed topic folded into per-task state; `apply` is idempotent per record."""

    def __init__(self, holdout_fraction: float, *, recent_disagreements: int = 500, history_kept: int = 500,
                 stats_points: int = 2000, outcome_bucket_s: int = 60, refresh_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.holdout_fraction = holdout_fraction
        self.refresh_s = refresh_s  # the dataset and the queue are recomputed at most this often
        self.clock = clock
        self.recent_disagreements = recent_disagreements
        self.history_kept = history_kept
        self.stats_points = stats_points
        self.outcome_bucket_s = outcome_bucket_s
        self.tasks: dict[str, TaskView] = {}
        self.task_of_review: dict[str, str] = {}  # call_id -> task, for tombstones (key only)
        self._apply = {
            catalog.DATASET.name: self.apply_record,
            catalog.DATASET_FORGOTTEN.name: self.apply_forgotten,
            catalog.LABELS_REVIEWED.name: self.apply_review,
            catalog.DISAGREEMENTS.name: self.apply_disagreement,
            catalog.SHADOW_RESULTS.name: self.apply_shadow_result,
            catalog.ROUTING_DECISIONS.name: self.apply_decision,
            catalog.ROUTING_HISTORY.name: self.apply_history,
            catalog.SHADOW_STATS.name: self.apply_stats,
            catalog.ROUTER_OUTCOMES.name: self.apply_outcome,
            catalog.MODELS.name: self.apply_model,
        }

    @property
    def followed(self) -> tuple[catalog.TopicSpec, ...]:
        return tuple(s for s in catalog.CATALOG if s.name in self._apply)

    def task(self, name: str) -> TaskView:
        return self.tasks.setdefault(name, TaskView())

    # --- feeding ------------------------------------------------------------------------------

    def apply(self, spec: catalog.TopicSpec, value: Optional[Contract], *, key: str = "",
              partition: Optional[int] = None, offset: Optional[int] = None) -> None:
        """One record of `spec`'s topic; `value` None is a tombstone of `key`."""
        if value is None:
            self.apply_tombstone(spec, key, partition, offset)
        elif spec.name == catalog.LABELS_REVIEWED.name:
            self.apply_review(value, partition=partition, offset=offset)
        elif spec.name == catalog.ROUTING_DECISIONS.name:
            self.apply_decision(value, key=key)
        elif spec.name == catalog.DATASET.name:
            self.apply_record(value, partition=partition)
        else:
            self._apply[spec.name](value)

    def apply_tombstone(self, spec: catalog.TopicSpec, key: str, partition: Optional[int] = None,
                        offset: Optional[int] = None) -> None:
        if spec.name == catalog.LABELS_REVIEWED.name and key in self.task_of_review:
            t = self.task(self.task_of_review[key])
            held = t.reviews.get(key)
            if held is not None and not _is_older(partition, offset, held):
                del t.reviews[key]
                del self.task_of_review[key]
                t.version += 1
        elif spec.name == catalog.ROUTING_DECISIONS.name and key:
            self.task(key).decision = None
        elif spec.name == catalog.MODELS.name and "/" in key:
            task, version = key.rsplit("/", 1)
            t = self.tasks.get(task)
            if t is not None and t.model_version == version:
                t.disputed, t.disputed_counts = {}, None
                t.version += 1
        elif spec.name == catalog.DATASET.name and "/" in key and partition is not None:
            task, digest = key.rsplit("/", 1)
            t = self.tasks.get(task)
            if t is not None and t.holdout.get(digest, {}).pop(partition, None) is not None:
                self._merge_input(t, task, digest)

    def apply_record(self, record: DatasetRecord, *, partition: Optional[int] = None) -> None:
        """A dataset record (one input on one captured partition, the latest per partition wins, as
        the compacted topic keeps it); only the holdout's are kept, split by this page's fraction."""
        digest = record.normalised_hash
        if split_of_hash(bytes.fromhex(digest), self.holdout_fraction) != "holdout":
            return
        t = self.task(record.task)
        if digest in t.forgotten:
            return
        t.holdout.setdefault(digest, {})[record.shard if partition is None else partition] = record
        self._merge_input(t, record.task, digest)

    def apply_forgotten(self, f: DatasetForgotten) -> None:
        """A forgotten input leaves the page for good, also if a record of it is read later."""
        t = self.task(f.task)
        t.forgotten.add(f.normalised_hash)
        t.version += 1
        if t.holdout.pop(f.normalised_hash, None) is not None:
            self._merge_input(t, f.task, f.normalised_hash)

    def _merge_input(self, t: TaskView, task: str, digest: str) -> None:
        """Re-merge one input's shards after one of them changed, and its counts with it."""
        old = t.inputs.pop(digest, None)
        if old is not None:
            t.holdout_calls -= old.calls
            t.parse_failures -= old.calls - old.usable
            if old.label is not None:
                t.frontier_labels[old.label] -= 1
                if t.frontier_labels[old.label] <= 0:
                    del t.frontier_labels[old.label]
            for cid in old.call_ids:
                t.by_call.pop(cid, None)
        shards = t.holdout.get(digest)
        if shards:
            new = t.inputs[digest] = merge_shards(shards.values())[(task, digest)]
            t.holdout_calls += new.calls
            t.parse_failures += new.calls - new.usable
            if new.label is not None:
                t.frontier_labels[new.label] += 1
            t.by_call.update(dict.fromkeys(new.call_ids, digest))
        else:
            t.holdout.pop(digest, None)
        t.version += 1

    def apply_model(self, m: ModelRegistered) -> None:
        """The newest registration of a task replaces its disputed labels (none when its metrics have
        no `label_review`: an extraction task, an older trainer); an older one read later changes nothing."""
        t = self.task(m.task)
        if t.model_version is not None and version_key(m.version) < version_key(t.model_version):
            return
        t.model_version = m.version
        t.disputed_counts, t.disputed = disputed_of(m.metrics_json)
        t.version += 1

    def apply_review(self, review: ReviewedLabel, *, partition: Optional[int] = None,
                     offset: Optional[int] = None) -> bool:
        """The latest review of a call wins (a compacted topic's semantics); a record read from the
        topic that is older than one already applied (this page's own, applied on send) is ignored."""
        t = self.task(review.task)
        held = t.reviews.get(review.call_id)
        if held is not None and _is_older(partition, offset, held):
            return False
        t.reviews[review.call_id] = Positioned(review, partition, offset)
        self.task_of_review[review.call_id] = review.task
        t.version += 1
        return True

    def _maybe_holdout(self, task: str, text: str) -> bool:
        return not text or split_of(task, text, self.holdout_fraction) == "holdout"

    def _add_answer(self, t: TaskView, answer: SmallAnswer) -> None:
        of_call = t.answers.setdefault(answer.call_id, {})
        held = of_call.get(answer.model_version)
        if held is not None and held.disagrees and not answer.disagrees:
            answer = SmallAnswer(answer.call_id, answer.output, answer.confidence, answer.model_version, True)
        if held != answer:
            of_call[answer.model_version] = answer
            t.version += 1

    def apply_disagreement(self, d: Disagreement) -> None:
        t = self.task(d.task)
        t.disagreements.pop(d.call_id, None)
        t.disagreements[d.call_id] = d
        while len(t.disagreements) > self.recent_disagreements:
            t.disagreements.popitem(last=False)
        if self._maybe_holdout(d.task, d.input):
            self._add_answer(t, SmallAnswer(d.call_id, d.small_output, d.confidence, d.model_version, True))

    def apply_shadow_result(self, r: ShadowResult) -> None:
        if self._maybe_holdout(r.task, r.input):
            disagrees = r.frontier_output is not None and not same_output(r.output, r.frontier_output)
            self._add_answer(self.task(r.task), SmallAnswer(r.call_id, r.output, r.confidence, r.model_version,
                                                            disagrees))

    def apply_decision(self, d: RoutingDecision, *, key: str = "") -> None:
        self.task(key or d.task).decision = d

    def apply_history(self, d: RoutingDecision) -> None:
        t = self.task(d.task)
        if any(h.decision_id == d.decision_id for h in t.history):
            return
        t.history.append(d)
        while len(t.history) > self.history_kept:
            t.history.popleft()

    def apply_stats(self, s: ShadowStats) -> None:
        series = self.task(s.task).stats.setdefault(s.model_version, deque(maxlen=self.stats_points))
        if not series or series[-1] != s:
            series.append(s)

    def apply_outcome(self, o: RouterOutcome) -> None:
        if o.mode != "small":
            return
        t = self.task(o.task)
        bucket = int(epoch_s(o.ts)) // self.outcome_bucket_s * self.outcome_bucket_s
        counts = t.outcomes.setdefault(bucket, [0, 0])
        counts[0] += 1
        counts[1] += o.served_by == "fallback"
        if len(t.outcomes) > MAX_OUTCOME_BUCKETS:
            del t.outcomes[min(t.outcomes)]

    # --- reading ------------------------------------------------------------------------------

    def latest_review(self, task: str, call_id: str) -> Optional[ReviewedLabel]:
        held = self.task(task).reviews.get(call_id)
        return held.review if held else None

    def _cached(self, t: TaskView, key: tuple, compute: Callable[[], Any], *, stale_ok: bool = True) -> Any:
        """`compute()`, reused while nothing changed, or while it is younger than `refresh_s` (the
        curator's functions are O(holdout) and a busy task changes all the time); with `stale_ok`
        false, only while nothing changed."""
        held, now = t.cached.get(key), self.clock()
        if held is not None and (held.version == t.version or stale_ok and now - held.at < self.refresh_s):
            return held.value
        value = compute()
        t.cached[key] = Cached(t.version, now, value)
        return value

    def dataset(self, task: str) -> Dataset:
        """The holdout part of the curator's dataset, reviews applied."""
        t = self.task(task)

        def compute() -> Dataset:
            return dataset_of(task, t.inputs.values(), {cid: p.review for cid, p in t.reviews.items()},
                              self.holdout_fraction)
        return self._cached(t, ("dataset",), compute)

    def queue(self, task: str, *, limit: int, low_confidence: float, since_ms: Optional[int] = None) -> list[Item]:
        """The curator's review queue, less the inputs a reviewer skipped; every item carries the
        small model's answer where there is one. A call reviewed since the queue was computed is
        left out at once."""
        t = self.task(task)

        def compute() -> list[Item]:
            dataset = self.dataset(task)
            skipped = {cid for cid, p in t.reviews.items() if p.review.verdict == "skip"}
            skipped_inputs = {t.reviews[cid].review.normalised_hash for cid in skipped} - {None}
            if skipped:
                dataset = Dataset(dataset.task, [e for e in dataset.examples if skipped.isdisjoint(e.call_ids)
                                                 and e.normalised_hash not in skipped_inputs],
                                  dataset.stats, dataset.reviewed_applied, dataset.excluded_by_review,
                                  dataset.label_counts)
            answers = (a for of_call in t.answers.values() for a in of_call.values())
            return [self._item_of(t, i) for i in build_review_queue(dataset, answers, limit=limit,
                                                                    low_confidence=low_confidence,
                                                                    since_ms=since_ms)]
        items = self._cached(t, ("queue", limit, low_confidence, since_ms), compute)
        return [i for i in items if self.latest_review(task, i.call_id) is i.review]

    def _best_answer(self, t: TaskView, call_id: str) -> Optional[SmallAnswer]:
        mine = t.answers.get(call_id, {}).values()
        return max(mine, key=lambda a: (a.disagrees, -a.confidence, a.model_version)) if mine else None

    def _item_of(self, t: TaskView, i: ReviewItem) -> Item:
        small, confidence, version = i.small_output, i.confidence, i.model_version
        if small is None:
            best = self._best_answer(t, i.call_id)
            if best is not None:
                small, confidence, version = best.output, best.confidence, best.model_version
        held = t.reviews.get(i.call_id)
        return Item(i.call_id, i.task, i.input, i.frontier_label, i.reason, small, confidence, version,
                    held.review if held else None)

    def item(self, task: str, call_id: str) -> Optional[Item]:
        """Any call of the task the page knows: one of a holdout input's latest calls (as its dataset
        records name them), a train label the newest model disputes, a recent disagreement, a reviewed call."""
        t = self.task(task)
        held = t.reviews.get(call_id)
        review = held.review if held else None
        best = self._best_answer(t, call_id)
        d = t.disagreements.get(call_id)
        call = t.inputs.get(t.by_call.get(call_id, ""))
        if call is not None:
            reason = "disagreement" if (best and best.disagrees) or d else "reviewed" if review else "sample"
            small = best or (SmallAnswer(call_id, d.small_output, d.confidence, d.model_version, True) if d else None)
            return Item(call_id, task, call.input, call.label, reason, small.output if small else None,
                        small.confidence if small else None, small.model_version if small else None, review)
        disputed = self.disputed_item(task, call_id)
        if disputed is not None:
            return disputed
        if d is not None:
            return Item(call_id, task, d.input, d.frontier_output, "disagreement", d.small_output, d.confidence,
                        d.model_version, review)
        if review is not None:
            return Item(call_id, task, "", None, "reviewed", review=review)
        return None

    def disputed(self, task: str) -> Disputed:
        """The newest model's disputed train labels in the listed order, forgotten inputs left out,
        each with the latest review naming its call id or its input hash."""
        t = self.task(task)

        def compute() -> Disputed:  # O(reviews)
            by_hash: dict[str, ReviewedLabel] = {}
            for p in t.reviews.values():
                h = p.review.normalised_hash
                if h is not None and (h not in by_hash or epoch_s(p.review.ts) >= epoch_s(by_hash[h].ts)):
                    by_hash[h] = p.review
            items = []
            for d in t.disputed.values():
                if d.normalised_hash in t.forgotten:
                    continue
                by_call = t.reviews.get(d.call_id)
                items.append((d, by_call.review if by_call else by_hash.get(d.normalised_hash)))
            counts = t.disputed_counts
            return Disputed(t.model_version if counts else None, *(counts or (0, 0)), items)

        return self._cached(t, ("disputed",), compute, stale_ok=False)  # a review must leave the list at once

    def disputed_item(self, task: str, call_id: str) -> Optional[Item]:
        """A disputed train label as a review item: the label trained on as the frontier's answer, the
        model's answer and probability as the small model's."""
        t = self.task(task)
        d = t.disputed.get(call_id)
        if d is None or d.normalised_hash in t.forgotten:
            return None
        review = self.disputed(task).reviews.get(call_id)
        return Item(d.call_id, task, d.input, d.label, "disputed", d.model_label, d.model_probability,
                    t.model_version, review, d.normalised_hash)

    def reviews(self, task: str) -> list[ReviewedLabel]:
        """The latest review of every reviewed call, newest first."""
        return sorted((p.review for p in self.task(task).reviews.values()),
                      key=lambda r: (epoch_s(r.ts), r.call_id), reverse=True)

    def review_counts(self, task: str) -> dict[str, int]:
        counts = Counter(p.review.verdict for p in self.task(task).reviews.values())
        return {"label": counts["label"], "not_in_label_set": counts["not_in_label_set"], "skip": counts["skip"],
                "total": sum(counts.values())}

    def gold_labels(self, task: str) -> Counter:
        """Label counts of the holdout, reviewed labels where reviewed, else the frontier's."""
        return Counter(e.label for e in self.dataset(task).examples)

    def agreement_series(self, task: str) -> dict[str, list[tuple[datetime, float]]]:
        """Per model version: (time, agreement with the frontier) from the judge's statistics."""
        return {version: [(s.ts, s.agreed / s.compared) for s in series if s.compared]
                for version, series in sorted(self.task(task).stats.items())}

    def fallback_series(self, task: str, max_points: int = 60) -> list[tuple[datetime, float, int]]:
        """(bin start, fallback rate, small-mode requests) of the task's small-mode outcomes, the
        buckets merged into at most `max_points` bins of equal width (a rate over a handful of
        requests is noise)."""
        buckets = sorted(self.task(task).outcomes.items())
        if not buckets:
            return []
        span = buckets[-1][0] - buckets[0][0] + self.outcome_bucket_s
        per_bin = max(1, -(-span // (self.outcome_bucket_s * max_points)))  # buckets per bin, rounded up
        width = per_bin * self.outcome_bucket_s
        bins: dict[int, list[int]] = {}
        for start, (n, fb) in buckets:
            acc = bins.setdefault(start // width * width, [0, 0])
            acc[0] += n
            acc[1] += fb
        return [(datetime.fromtimestamp(b, timezone.utc), fb / n, n) for b, (n, fb) in sorted(bins.items()) if n]

    def latest_stats(self, task: str) -> list[ShadowStats]:
        return [series[-1] for _, series in sorted(self.task(task).stats.items()) if series]


def disputed_of(metrics_json: str) -> tuple[Optional[tuple[int, int]], dict[str, DisputedLabel]]:
    """((disputed, listed), call_id -> item) from a registration's metrics; (None, {}) where it has
    no well-formed `label_review`. At most MAX_DISPUTED items; an item missing a field is left out."""
    try:
        review = json.loads(metrics_json or "{}").get("label_review")
    except (json.JSONDecodeError, AttributeError):
        return None, {}
    if not isinstance(review, dict) or not isinstance(review.get("items"), list):
        return None, {}
    items: dict[str, DisputedLabel] = {}
    for raw in review["items"][:MAX_DISPUTED]:
        try:
            d = DisputedLabel(str(raw["call_id"]), str(raw["normalised_hash"]), str(raw["input"]), str(raw["label"]),
                              _opt_str(raw.get("frontier_label")), str(raw["model_label"]),
                              _opt_float(raw.get("label_probability")), _opt_float(raw.get("model_probability")))
        except (KeyError, TypeError, ValueError):
            continue
        items.setdefault(d.call_id, d)
    counts = (_int(review.get("disputed"), len(items)), _int(review.get("listed"), len(items)))
    return counts, items


def _opt_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _opt_float(value: Any) -> Optional[float]:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _is_older(partition: Optional[int], offset: Optional[int], held: Positioned) -> bool:
    """A record read at (partition, offset) is older than the held one (same partition, lower offset)."""
    return (offset is not None and held.offset is not None and partition == held.partition
            and offset < held.offset)
