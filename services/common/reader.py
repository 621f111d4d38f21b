"""The topic reader: read partitions to the end they had when the read began (and, if asked, on).

Snapshots and reports (`replay_topic`), the controller's replay and outcome reads, the judge's and
the batch processors' state restores, `graduate topics tail` and the followers' replay all read
this way, so the edge cases live here once:
- a topic that does not exist (yet): metadata is refreshed once, then it reads as empty and is
  named in `missing` (or `LookupError` without `missing_ok`);
- empty partitions: nothing to wait for;
- ends that move while reading: the ends are taken when the read begins; later records are not
  read (unless `follow`), so a read of a busy topic finishes;
- compacted gaps (and transaction markers): a partition is done when the consumer's position
  reaches its end, never by waiting for the offset `end - 1`, which may be gone.
Records come raw (aiokafka `ConsumerRecord`s, in offset order per partition); decoding is the
caller's (`replay_topic` keeps the undecodable apart).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.common.catalog import TopicSpec, topic_name
from services.common.codec import Codec
from services.common.contracts import Contract
from services.common.settings import KafkaSettings

T = TypeVar("T", bound=Contract)


@dataclass(frozen=True)
class Span:
    """Offsets [start, end) of a partition that a read covers before it is caught up."""

    start: int
    end: int


def start_offset(beginning: int, end: int, *, last: Optional[int] = None, position: Optional[int] = None) -> int:
    """Where a partition's read starts (pure): a kept position, else `last` records before the end,
    else its beginning; never before the beginning."""
    if position is not None:
        return max(position, beginning)
    if last is not None:
        return max(beginning, end - last)
    return beginning


class TopicReader:
    """Reads `topics` (all partitions, or `partitions` of each) from their start to the ends they
    had at `open()`; with `follow`, goes on reading what arrives after (`caught_up` says when the
    ends were reached). `positions` resumes partitions where a previous read stopped; `last`
    starts N records before each end; `until` caps the ends (partition -> offset).

        async with TopicReader(kafka, name) as reader:
            async for records in reader:      # a list of ConsumerRecords of one partition
                ...
    """

    def __init__(self, kafka: KafkaSettings, topics: str | Iterable[str], *, partitions: Iterable[int] | None = None,
                 last: Optional[int] = None, until: Mapping[int, int] | None = None,
                 positions: Mapping[TopicPartition, int] | None = None, follow: bool = False,
                 missing_ok: bool = True, client_id: Optional[str] = None, max_poll_records: int = 2000,
                 poll_ms: int = 1000) -> None:
        self.kafka = kafka
        self.topics = [topics] if isinstance(topics, str) else sorted(set(topics))
        self.partitions = None if partitions is None else set(partitions)
        self.last, self.until, self.follow, self.missing_ok = last, until, follow, missing_ok
        self.positions: dict[TopicPartition, int] = dict(positions or {})  # next offset per partition read
        self.client_id = client_id or f"{kafka.client_id}-reader"
        self.max_poll_records, self.poll_ms = max_poll_records, poll_ms
        self.spans: dict[TopicPartition, Span] = {}
        self.missing: set[str] = set()
        self.consumer: Optional[AIOKafkaConsumer] = None
        self._pending: set[TopicPartition] = set()

    @property
    def caught_up(self) -> bool:
        """Every partition was read to the end it had at open() (true at once for empty ones)."""
        return self.consumer is not None and not self._pending

    async def __aenter__(self) -> "TopicReader":
        await self.open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def open(self) -> None:
        self.consumer = AIOKafkaConsumer(**self.kafka.client_config(), group_id=None, enable_auto_commit=False,
                                         auto_offset_reset="earliest", client_id=self.client_id,
                                         max_poll_records=self.max_poll_records)
        await self.consumer.start()
        try:
            tps = await self._partitions_of()
            if not tps:
                return
            self.consumer.assign(tps)
            beginnings = await self.consumer.beginning_offsets(tps)
            ends = await self.consumer.end_offsets(tps)
            for tp in tps:
                end = ends[tp] if self.until is None else min(ends[tp], self.until.get(tp.partition, 0))
                start = start_offset(beginnings[tp], end, last=self.last, position=self.positions.get(tp))
                self.consumer.seek(tp, start)
                self.spans[tp] = Span(start, end)
                if start < end:
                    self._pending.add(tp)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def _partitions_of(self) -> list[TopicPartition]:
        consumer = self.consumer
        found = {t: consumer.partitions_for_topic(t) for t in self.topics}
        if not all(found.values()):
            await consumer._client.force_metadata_update()  # a topic created just now; aiokafka has no public call
            found = {t: consumer.partitions_for_topic(t) for t in self.topics}
        self.missing = {t for t, parts in found.items() if not parts}
        if self.missing and not self.missing_ok:
            raise LookupError(f"topic(s) {', '.join(sorted(self.missing))} do not exist on the broker "
                              "(run `graduate topics ensure`)")
        return [TopicPartition(t, p) for t in self.topics for p in sorted(found[t] or ())
                if self.partitions is None or p in self.partitions]

    async def __aiter__(self) -> AsyncIterator[list[Any]]:
        consumer = self.consumer
        assert consumer is not None, "open() the reader first"
        while self._pending or (self.follow and self.spans):
            wanted = list(self.spans) if self.follow else list(self._pending)
            batch = await consumer.getmany(*wanted, timeout_ms=self.poll_ms)
            for tp in list(self._pending):  # before yielding: `caught_up` is true with the last records
                if await consumer.position(tp) >= self.spans[tp].end:
                    self._pending.discard(tp)
            quiet = True
            for tp, records in batch.items():
                if not self.follow:
                    records = [r for r in records if r.offset < self.spans[tp].end]
                if records:
                    self.positions[tp] = records[-1].offset + 1
                    quiet = False
                    yield records
            if quiet and self.follow:
                yield []  # a quiet poll: a follower looks at `caught_up` and its clock


async def read_latest(kafka: KafkaSettings, topic: str, partitions: Iterable[int], *,
                      last: Optional[int] = None) -> dict[bytes, Any]:
    """The latest value per key in `partitions` of `topic` (None for a key whose latest is a
    tombstone), reading each partition whole or its `last` records."""
    latest: dict[bytes, Any] = {}
    parts = set(partitions)
    if not parts:
        return latest
    async with TopicReader(kafka, topic, partitions=parts, last=last, max_poll_records=5000) as reader:
        async for records in reader:
            for r in records:
                latest[r.key] = r.value
    return latest


# --- decoded: a catalog topic into its contract ----------------------------------------------------

@dataclass
class Replay(Generic[T]):
    """What a read of one catalog topic gave: decoded records in offset order per partition."""

    topic: str
    records: list[Any]  # services.common.streams.Item[T]
    offsets: dict[int, tuple[int, int]]  # partition -> [start, end) read
    undecodable: list[tuple[Any, str]] = field(default_factory=list)  # (Meta, reason)


async def replay_topic(kafka: KafkaSettings, codec: Codec, spec: TopicSpec, namespace: str, model: type[T], *,
                       end_offsets: dict[int, int] | None = None, missing_ok: bool = True,
                       last: Optional[int] = None, tombstones: bool = False,
                       positions: dict[int, int] | None = None) -> Replay[T]:
    """Every record of a catalog topic from its start (or its `last` per partition, or the offset
    `positions` gives a partition) up to `end_offsets` (default: the end at the start of the read),
    decoded into `model`.

    Undecodable records are returned apart with the reason (the snapshot reports them; the
    workers dead-letter what they consume). A topic that does not exist reads as empty when
    `missing_ok`, else raises LookupError. With `tombstones`, a record without a value (a
    compacted topic's deletion) reads as an item whose value is None.
    """
    from services.common.streams import Item, Meta

    name = topic_name(spec, namespace)
    out: Replay[T] = Replay(name, [], {})
    by_part: dict[int, list] = {}
    starts = {TopicPartition(name, p): o for p, o in (positions or {}).items()}
    async with TopicReader(kafka, name, until=end_offsets, missing_ok=missing_ok, last=last, positions=starts,
                           client_id=f"{kafka.client_id}-replay") as reader:
        out.offsets = {tp.partition: (s.start, s.end) for tp, s in reader.spans.items()}
        async for records in reader:
            part = by_part.setdefault(records[0].partition, [])
            for m in records:
                meta = Meta(m.topic, m.partition, m.offset, m.key, m.timestamp / 1000.0, tuple(m.headers or ()))
                if tombstones and m.value is None:
                    part.append(Item(None, meta))
                    continue
                try:
                    part.append(Item(codec.decode(m.value, model), meta))
                except Exception as exc:  # noqa: BLE001 - reported apart, never fatal to a read
                    out.undecodable.append((meta, str(exc)))
    out.records = [item for p in sorted(by_part) for item in by_part[p]]
    return out
