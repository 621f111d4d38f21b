"""Dataset-topic reads built from calls, for unit tests of the snapshot and the review queue:
the curator's fold (services/curator/dataset.py) without a broker."""
from __future__ import annotations

from typing import Iterable

from services.common.contracts import CapturedCall, ReviewedLabel
from services.common.streams import Item, Meta, Replay
from services.curator.dataset import fold_calls, to_record
from services.curator.logic import curate_call
from services.curator.snapshot import SourceData

DATASET_TOPIC = "t.graduate.dataset"


def dataset_replay(calls: Iterable[tuple[int, int, CapturedCall]], fraction: float = 0.15) -> Replay:
    """(captured partition, offset, call) in read order -> what the dataset topic would hold."""
    entries = fold_calls((p, o, curate_call(c, fraction)) for p, o, c in calls)
    items = [Item(to_record(e), Meta(DATASET_TOPIC, shard, i, key.encode()))
             for i, ((shard, key), e) in enumerate(sorted(entries.items()))]
    return Replay(DATASET_TOPIC, items, {p: (0, 1) for p in sorted({s for s, _ in entries})})


def source_data(calls: Iterable[tuple[int, int, CapturedCall]], reviews: list[ReviewedLabel],
                fraction: float = 0.15) -> SourceData:
    topic = "t.graduate.labels.reviewed"
    return SourceData(dataset_replay(calls, fraction),
                      Replay(topic, [Item(r, Meta(topic, 0, i)) for i, r in enumerate(reviews)], {0: (0, len(reviews))}),
                      Replay("t.graduate.dataset.forgotten", [], {}))
