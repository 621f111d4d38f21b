"""The curator's side of the dataset topic: per-input state on disk, rebuilt from the topic.

Per input and captured partition (shard) the curator needs the record it last wrote, to apply the
next call to it (services/curator/dataset.py). Kept in the worker's heap for every input that
would grow without bound, so each owned shard has a SQLite file (stdlib; journal off: it is a cache)
with a 2 MiB page cache: memory stays bounded whatever the number of inputs. The file keeps each
record as the bytes sent (or read back from the topic): a record is encoded once, for the topic and
the file, and read back into plain values (`Codec.fields_decoder`) only when its input returns.
The dataset topic is the truth: after every assignment (and after a failed batch) the file is
deleted and rebuilt from partition `shard` of the dataset topic, which holds everything sent before
the state checkpoint and possibly more (a batch sent but not checkpointed) — a replayed call at or
below a record's `last_offset` then changes nothing, so nothing is counted twice and nothing sent is
lost.

Deletions (`graduate dataset forget`) come from the compacted forgotten topic, followed from its
start: a forgotten input is dropped from the files and never taken in again, also on replay.
"""
from __future__ import annotations

import logging
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

from services.common import catalog
from services.common.codec import Codec
from services.common.contracts import DatasetForgotten, DatasetRecord
from services.common.follow import TopicFollower
from services.common.reader import TopicReader
from services.common.settings import KafkaSettings
from services.common.streams import Emit
from services.curator.dataset import apply_call, record_key
from services.curator.logic import CuratedCall

log = logging.getLogger(__name__)
CACHE_KIB = 2048
SELECT_KEYS = 512  # keys per SELECT … IN (…), at most
UPSERT = "INSERT OR REPLACE INTO entry (key, value) VALUES (?, ?)"


def padded(keys: list[str]) -> list[str]:
    """`keys` repeated at the end to the next power of two (pure). sqlite3 caches a prepared
    statement per distinct SQL text (128 per connection): one IN list per batch size made up to
    128 statements of up to ~100 KiB each per shard, the curator's RSS growing with the sizes seen
    (issue 16: +12 MiB per connection over sizes 1–500). Padded, a shard has at most 10."""
    size = 1 << (len(keys) - 1).bit_length() if keys else 0
    return keys + keys[-1:] * (size - len(keys))


class ShardStore:
    """One SQLite file per owned shard: key task/hash -> the DatasetRecord's bytes as sent to the
    dataset topic (Avro, framed with its schema: the file is this worker's own cache)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dbs: dict[int, sqlite3.Connection] = {}

    def reset(self, shard: int) -> sqlite3.Connection:
        self.close(shard)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"shard-{shard}.sqlite"
        path.unlink(missing_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        # No journal, no fsync: safe only because the file is a cache. rebuild_shards deletes it and
        # rebuilds it from the dataset topic after every assignment and every failed batch.
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE entry (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self.dbs[shard] = db
        return db

    def close(self, shard: int) -> None:
        db = self.dbs.pop(shard, None)
        if db is not None:
            db.close()

    def keep_only(self, shards: Iterable[int]) -> None:
        for shard in set(self.dbs) - set(shards):
            self.close(shard)

    def get_many(self, shard: int, keys: list[str]) -> dict[str, bytes]:
        db, out = self.dbs[shard], {}
        for i in range(0, len(keys), SELECT_KEYS):
            chunk = padded(keys[i:i + SELECT_KEYS])
            out.update(db.execute(f"SELECT key, value FROM entry WHERE key IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def put_many(self, shard: int, values: Iterable[tuple[str, bytes]]) -> None:
        """(key, record bytes) pairs, in one transaction (a key given twice: the last wins)."""
        db = self.dbs[shard]
        db.execute("BEGIN")
        db.executemany(UPSERT, values)
        db.execute("COMMIT")

    def delete(self, key: str, shard: int | None = None) -> None:
        """Drop `key` from one shard, or from every open shard."""
        for db in self.dbs.values() if shard is None else (self.dbs[shard],):
            db.execute("DELETE FROM entry WHERE key = ?", (key,))

    def count(self, shard: int) -> int:
        return self.dbs[shard].execute("SELECT count(*) FROM entry").fetchone()[0]


class Forgotten(TopicFollower):
    """The forgotten inputs (task/hash keys), followed from the start of the forgotten topic."""

    name = "forgotten"

    def __init__(self, kafka: KafkaSettings, codec: Codec, namespace: str, store: ShardStore,
                 on_forget: Callable[[str], None] | None = None) -> None:
        super().__init__(kafka, [catalog.topic_name(catalog.DATASET_FORGOTTEN, namespace)], require_all=False,
                         client_id=f"{kafka.client_id}-curator-forgotten")
        self.codec, self.store, self.keys = codec, store, set()
        self.on_forget = on_forget  # called for a key forgotten after the replay (the curator tombstones it)

    def apply(self, record: Any) -> None:
        if record.value is None:
            return  # the deletion itself is never undone by compaction; a tombstone here means nothing
        try:
            gone = self.codec.decode(record.value, DatasetForgotten)
        except Exception as exc:  # noqa: BLE001 - a foreign record in the topic is skipped, said once
            log.warning("forgotten: undecodable record at offset %s skipped (%s)", record.offset, exc)
            return
        key = record_key(gone.task, gone.normalised_hash)
        fresh = key not in self.keys
        self.keys.add(key)
        self.store.delete(key)
        if fresh and self.ready.is_set() and self.on_forget is not None:
            self.on_forget(key)


def write_dataset(store: ShardStore, codec: Codec, forgotten: set[str], shard: int,
                  calls: list[tuple[CuratedCall, int]]) -> list[Emit]:
    """Apply a batch of one captured partition's admitted calls (with their offsets) to its shard and
    return the changed records, one per input touched, to send to partition `shard` of the dataset
    topic (encoded from the entries, once for the topic and the file: building a DatasetRecord model
    each would double the cost). The steps are apart so bench/bench_curator_stages.py can time each."""
    by_key = group_by_key(calls, forgotten)
    if not by_key:
        return []
    changed = fold_entries(read_entries(codec, store.get_many(shard, list(by_key))), by_key, shard)
    if not changed:
        return []
    emits = dataset_emits(codec, changed, shard)
    store.put_many(shard, [(e.key, e.value) for e in emits])
    return emits


def group_by_key(calls: list[tuple[CuratedCall, int]], forgotten: set[str]) -> dict[str, list[tuple[CuratedCall, int]]]:
    """A batch's calls (with offsets) by dataset key, in read order; forgotten inputs left out."""
    by_key: dict[str, list[tuple[CuratedCall, int]]] = defaultdict(list)
    for call, offset in calls:
        key = record_key(call.task, call.normalised_hash)
        if key not in forgotten:
            by_key[key].append((call, offset))
    return by_key


def read_entries(codec: Codec, values: dict[str, bytes]) -> dict[str, dict]:
    """The shard's records of these keys as entries (plain values, timestamps in epoch ms)."""
    read = codec.fields_decoder(DatasetRecord)
    return {key: read(value) for key, value in values.items()}


def fold_entries(entries: dict[str, dict], by_key: dict[str, list[tuple[CuratedCall, int]]],
                 shard: int) -> dict[str, dict]:
    """The entries the calls change (`entries`: what the shard holds of these keys)."""
    changed: dict[str, dict] = {}
    for key, group in by_key.items():
        entry = entries.get(key)
        for call, offset in group:
            out = apply_call(entry, call, offset, shard)
            if out is not None:
                entry = changed[key] = out
    return changed


def dataset_emits(codec: Codec, changed: dict[str, dict], shard: int) -> list[Emit]:
    """The changed entries as encoded DatasetRecords for partition `shard` of the dataset topic."""
    encode = codec.fields_encoder(DatasetRecord)
    return [Emit(catalog.DATASET, key, encode(e), partition=shard) for key, e in changed.items()]


async def rebuild_shards(store: ShardStore, kafka: KafkaSettings, codec: Codec, topic: str,
                         shards: set[int], forgotten: set[str]) -> dict[int, int]:
    """Recreate the shards' files from their dataset partitions (to the end seen at start); returns
    the entries per shard. A tombstone or a forgotten key removes the entry."""
    for shard in shards:
        store.reset(shard)
    if not shards:
        return {}
    read = codec.fields_decoder(DatasetRecord)
    async with TopicReader(kafka, topic, partitions=shards, missing_ok=False,
                           client_id=f"{kafka.client_id}-curator-dataset-restore") as reader:
        missing = sorted(set(shards) - {tp.partition for tp in reader.spans})
        if missing:  # the restore retries (the worker stays unready) until partitions are added
            raise RuntimeError(f"{topic} lacks partitions {missing}: captured partitions {missing} have no "
                               "dataset partition; give it as many partitions as the captured topic")
        async for records in reader:
            puts: dict[str, bytes] = {}
            partition = records[0].partition
            for r in records:
                key = r.key.decode()
                if r.value is None or key in forgotten:
                    puts.pop(key, None)
                    store.delete(key, partition)
                    continue
                try:
                    read(r.value)  # kept as read, once it is known to be a DatasetRecord
                    puts[key] = bytes(r.value)
                except Exception as exc:  # noqa: BLE001 - a foreign record is skipped, not restored
                    log.warning("dataset restore: %s[%d]@%d skipped (%s)", topic, partition, r.offset, exc)
            store.put_many(partition, puts.items())
    return {shard: store.count(shard) for shard in shards}
