"""Read a catalog topic's latest records, decoded, for a person at a terminal (`graduate topics tail`).

Uses no consumer group (it commits nothing and disturbs no processor): it assigns every
partition, starts ``last`` records before each partition's end, and stops at the end unless
asked to follow.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from services.common.catalog import CATALOG, TopicSpec, topic_name
from services.common.codec import Codec, CodecError
from services.common.reader import TopicReader
from services.common.settings import KafkaSettings


@dataclass(frozen=True)
class TailedRecord:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: dict[str, Any] | None  # the decoded record, JSON-ready
    error: str | None  # why it could not be decoded
    headers: dict[str, str | None] = field(default_factory=dict)  # e.g. a dead letter's reason

    def as_json(self) -> str:
        return json.dumps({"partition": self.partition, "offset": self.offset, "timestamp": self.timestamp_ms,
                           "key": _text(self.key), "headers": self.headers, "value": self.value,
                           "error": self.error})

    def as_line(self) -> str:
        ts = datetime.fromtimestamp(self.timestamp_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        body = json.dumps(self.value, ensure_ascii=False) if self.error is None else f"UNDECODABLE: {self.error}"
        return f"{self.partition}:{self.offset}  {ts}  {_text(self.key)}  {body}"


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode("utf-8", "backslashreplace")


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):  # dead letters carry raw keys and payloads, often not UTF-8
        return v.decode("utf-8", "backslashreplace")
    if isinstance(v, datetime):
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def find_topic(name: str, namespace: str = "") -> TopicSpec:
    """A catalog topic by its full name, its name without ``graduate.``, or its contract's name."""
    for spec in CATALOG:
        full = topic_name(spec, namespace)
        if name in (full, spec.name, spec.name.removeprefix("graduate."), spec.value.__name__):
            return spec
    known = ", ".join(s.name.removeprefix("graduate.") for s in CATALOG)
    raise KeyError(f"{name!r} is not a catalog topic; one of: {known}")


def decode_record(codec: Codec, spec: TopicSpec, partition: int, offset: int, timestamp_ms: int,
                  key: bytes | None, raw: bytes | None, headers: Any = ()) -> TailedRecord:
    meta = {name: None if v is None else _text(bytes(v)) for name, v in headers or ()}
    if raw is None:
        return TailedRecord(partition, offset, timestamp_ms, key, None, None, meta)  # a compaction tombstone
    try:
        value = json.loads(json.dumps(codec.decode(raw, spec.value).model_dump(), default=_jsonable))
        return TailedRecord(partition, offset, timestamp_ms, key, value, None, meta)
    except CodecError as exc:
        return TailedRecord(partition, offset, timestamp_ms, key, None, str(exc), meta)


async def tail(kafka: KafkaSettings, spec: TopicSpec, codec: Codec, namespace: str = "", *,
               last: int = 10, follow: bool = False) -> AsyncIterator[TailedRecord]:
    """The last ``last`` records of every partition, then (``follow``) whatever arrives."""
    name = topic_name(spec, namespace)
    async with TopicReader(kafka, name, last=last, follow=follow, missing_ok=False, poll_ms=500) as reader:
        async for records in reader:
            for m in records:
                yield decode_record(codec, spec, m.partition, m.offset, m.timestamp, m.key, m.value, m.headers)
