"""The dataset topic as pure functions: fold curated calls into per-input records, read a Dataset back.

The curator writes one `DatasetRecord` per distinct normalised input and captured partition (its
shard) to partition `shard` of the compacted dataset topic, under key `task/normalised_hash`. One
writer per shard (the owner of that captured partition), so no two workers ever read-modify-write
the same record, and no re-keying hop through Kafka is needed. A reader merges a key's shards (at
most one per captured partition) with `merge_shards`; `dataset_of` then gives the same `Dataset` as
`logic.build_dataset` over the calls themselves (tests/unit/test_curator_dataset.py holds that).

Idempotent on replay: a shard's record keeps the highest captured offset it applied
(`last_offset`) and its latest call ids; a call at or below that offset, or resent under a call_id
it already holds, changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Optional

from services.common.contracts import DatasetRecord, ReviewedLabel
from services.common.normalize import split_of_hash
from services.curator.logic import CuratedCall, Dataset, DedupStats, Example, label_counts

MAX_ANSWERS = 8  # distinct answers kept per input; more only sets answers_overflow (a conflict either way)
MAX_RECENT = 32  # call ids kept per shard: what reviews and shadow results are matched by

Entry = dict  # a DatasetRecord as JSON-able plain values (timestamps in epoch ms), what the shard store keeps


def record_key(task: str, digest: str) -> str:
    return f"{task}/{digest}"


def _rank(usable: bool, ts: int, call_id: str) -> tuple:
    """The kept call is the latest whose answer parsed, else the latest (ties: call_id)."""
    return (usable, ts, call_id)


def new_entry(call: CuratedCall, offset: int, shard: int) -> Entry:
    return {"task": call.task, "normalised_hash": call.normalised_hash, "shard": shard, "split": call.split,
            "call_id": call.call_id, "input": call.input, "label": call.label, "kept_ts": call.ts_ms,
            "first_seen": call.ts_ms, "last_seen": call.ts_ms, "calls": 1, "usable": int(call.usable),
            "answers": [call.label] if call.usable else [], "answers_overflow": False,
            "recent_call_ids": [call.call_id], "last_offset": offset}


def apply_call(entry: Optional[Entry], call: CuratedCall, offset: int, shard: int) -> Optional[Entry]:
    """The entry with `call` (read at `offset` of captured partition `shard`) applied, in place;
    None when the call was applied before (a replay or a resend): nothing changes then."""
    if entry is None:
        return new_entry(call, offset, shard)
    if offset <= entry["last_offset"] or call.call_id in entry["recent_call_ids"]:
        return None
    entry["calls"] += 1
    entry["first_seen"] = min(entry["first_seen"], call.ts_ms)
    entry["last_seen"] = max(entry["last_seen"], call.ts_ms)
    if call.usable:
        entry["usable"] += 1
        answers = entry["answers"]
        if call.label not in answers:
            if len(answers) < MAX_ANSWERS:
                answers.append(call.label)
                answers.sort()
            else:
                entry["answers_overflow"] = True
    if _rank(call.usable, call.ts_ms, call.call_id) > _rank(entry["label"] is not None, entry["kept_ts"],
                                                           entry["call_id"]):
        entry.update(call_id=call.call_id, input=call.input, label=call.label, kept_ts=call.ts_ms)
    recent = entry["recent_call_ids"]
    recent.append(call.call_id)
    del recent[:-MAX_RECENT]
    entry["last_offset"] = offset
    return entry


def fold_calls(calls: Iterable[tuple[int, int, CuratedCall]]) -> dict[tuple[int, str], Entry]:
    """(shard, offset, call) in read order -> the entries per (shard, key): what the curator's shard
    files end up holding (the curator applies batches the same way, services/curator/shards.py)."""
    entries: dict[tuple[int, str], Entry] = {}
    for shard, offset, call in calls:
        key = (shard, record_key(call.task, call.normalised_hash))
        out = apply_call(entries.get(key), call, offset, shard)
        if out is not None:
            entries[key] = out
    return entries


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _ms(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return int(round(ts.timestamp() * 1000))


def to_record(entry: Entry) -> DatasetRecord:
    return DatasetRecord(**{**entry, "kept_ts": _dt(entry["kept_ts"]), "first_seen": _dt(entry["first_seen"]),
                            "last_seen": _dt(entry["last_seen"])})


def to_entry(record: DatasetRecord) -> Entry:
    data = record.model_dump()
    data.update(kept_ts=_ms(record.kept_ts), first_seen=_ms(record.first_seen), last_seen=_ms(record.last_seen))
    return data


# --- the read side ----------------------------------------------------------------------------------

def live_records(items: Iterable, forgotten: Iterable[str] = ()) -> list[DatasetRecord]:
    """What a compacted read of the dataset topic holds: the last record per partition and key, a
    tombstone (value None) removing it, a forgotten key (task/hash) left out. `items`: Items with a
    `meta` (partition, key) in offset order per partition."""
    gone = set(forgotten)
    last: dict[tuple[int, bytes], Optional[DatasetRecord]] = {}
    for item in items:
        last[(item.meta.partition, item.meta.key)] = item.value
    return [r for r in last.values() if r is not None and record_key(r.task, r.normalised_hash) not in gone]

@dataclass(frozen=True)
class Input:
    """A distinct input of a task, its shards merged."""

    task: str
    normalised_hash: str
    call_id: str
    input: str
    label: Optional[str]
    kept_ts: int
    first_seen: int
    last_seen: int
    calls: int
    usable: int
    conflict: bool
    call_ids: tuple[str, ...]


def merge_shards(records: Iterable[DatasetRecord]) -> dict[tuple[str, str], Input]:
    """The records of any number of shards, merged per (task, normalised hash)."""
    merged: dict[tuple[str, str], list[DatasetRecord]] = {}
    for r in records:
        merged.setdefault((r.task, r.normalised_hash), []).append(r)
    return {key: _merge(parts) for key, parts in merged.items()}


def _merge(parts: list[DatasetRecord]) -> Input:
    kept = max(parts, key=lambda r: _rank(r.label is not None, _ms(r.kept_ts), r.call_id))
    answers = {a for r in parts for a in r.answers}
    return Input(kept.task, kept.normalised_hash, kept.call_id, kept.input, kept.label, _ms(kept.kept_ts),
                 min(_ms(r.first_seen) for r in parts), max(_ms(r.last_seen) for r in parts),
                 sum(r.calls for r in parts), sum(r.usable for r in parts),
                 len(answers) > 1 or any(r.answers_overflow for r in parts),
                 tuple(sorted({c for r in parts for c in r.recent_call_ids})))


def reviews_by_input(reviews: dict[str, ReviewedLabel]) -> dict[tuple[str, str], ReviewedLabel]:
    """The newest review per (task, input hash), from the reviews that carry the hash (ReviewedLabel
    v1.1): an input's review whichever of its calls was reviewed, however old ('skip' does not count)."""
    out: dict[tuple[str, str], ReviewedLabel] = {}
    for r in reviews.values():
        if r.normalised_hash is None or r.verdict == "skip":
            continue
        key = (r.task, r.normalised_hash)
        held = out.get(key)
        if held is None or (_ms(r.ts), r.call_id) > (_ms(held.ts), held.call_id):
            out[key] = r
    return out


def review_of(call_ids: Iterable[str], reviews: dict[str, ReviewedLabel],
              by_input: Optional[ReviewedLabel] = None) -> Optional[ReviewedLabel]:
    """The newest review of any of these calls or, given `by_input`, of the input itself
    (verdict 'skip' does not count)."""
    found = [reviews[c] for c in call_ids if c in reviews and reviews[c].verdict != "skip"]
    found += [by_input] if by_input is not None else []
    return max(found, key=lambda r: (_ms(r.ts), r.call_id)) if found else None


def dataset_of(task: str, inputs: Iterable[Input], reviews: dict[str, ReviewedLabel],
               holdout_fraction: float) -> Dataset:
    """A task's Dataset from its merged inputs: the same rules as `logic.build_dataset` (a reviewed label
    wins — matched by the review's input hash, else by the input's latest call ids —, 'not_in_label_set'
    removes the input, an input never parsed nor reviewed is no example); the split is recomputed from the hash with `holdout_fraction`."""
    stats = DedupStats()
    examples: list[Example] = []
    applied = excluded = 0
    by_input = reviews_by_input(reviews)
    for i in sorted((i for i in inputs if i.task == task), key=lambda i: i.normalised_hash):
        stats.distinct_inputs += 1
        stats.calls += i.calls
        stats.parse_failures += i.calls - i.usable
        stats.duplicate_calls += i.calls - 1
        stats.conflicting_inputs += i.conflict
        review = review_of(i.call_ids, reviews, by_input.get((task, i.normalised_hash)))
        if review is not None and review.verdict == "not_in_label_set":
            excluded += 1
            continue
        reviewed = review is not None and review.label is not None
        if i.label is None and not reviewed:
            stats.unlabelled_inputs += 1
            continue
        applied += reviewed
        split = split_of_hash(bytes.fromhex(i.normalised_hash), holdout_fraction)
        examples.append(Example(i.call_id, task, i.input, review.label if reviewed else i.label, i.label, reviewed,
                                i.normalised_hash, split, i.call_ids, i.kept_ts))
    return Dataset(task, examples, stats, applied, excluded, label_counts(examples))
