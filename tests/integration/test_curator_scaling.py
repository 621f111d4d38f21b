"""Two curator workers share the partitions; one is SIGKILLed mid-stream; nothing is lost or doubled.

The effect checked is the curator's state (a bounded tally per task and source partition, with the
offset it reached), read back from its state topic and from the surviving worker's stats, against
the calls produced.
"""
from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter

import pytest

from services.common.catalog import CALLS_CAPTURED, topic_name
from services.common.normalize import input_hash, normalise_input, split_of
from services.common.batch import read_state_record, state_topic
from tests.integration.test_workers import (feed_slowly, BANKING, banking77_calls, start_worker, stop_worker, wait_for)
from tests.support import read_topic

pytestmark = pytest.mark.integration


async def written_states(kafka_settings, namespace) -> dict[int, tuple]:
    """The last state record per source partition: partition -> (next_offset, tallies JSON)."""
    out = {}
    for r in await read_topic(kafka_settings, state_topic("curator", namespace, CALLS_CAPTURED), min_count=1):
        assert json.loads(r.key) == r.partition  # source partition p's state lives in partition p
        out[r.partition] = read_state_record(r.value)  # read_topic returns each partition in offset order
    return out


async def assert_state_counts_each_call_once(kafka_settings, namespace, calls, timeout: float = 60.0) -> None:
    """The written state covers every produced record exactly once: per partition, its offset is
    the partition's end and its tally counts that partition's calls (waiting for the worker's next
    checkpoint, GRADUATE_WORKER_COMMIT_INTERVAL_S)."""
    produced = Counter(r.partition for r in await read_topic(kafka_settings, topic_name(CALLS_CAPTURED, namespace),
                                                             min_count=len(calls)))
    deadline = time.monotonic() + timeout
    while True:
        states = await written_states(kafka_settings, namespace)
        got = {p: (states.get(p, (None, {}))[0], states.get(p, (None, {}))[1].get(BANKING, {}).get("calls"))
               for p in produced}
        if got == {p: (n, n) for p, n in produced.items()} or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    assert got == {p: (n, n) for p, n in produced.items()}, "partition -> (next offset, calls counted)"
    assert sum(s[1][BANKING]["calls"] for s in states.values()) == len(calls)


async def test_two_workers_one_killed_nothing_lost_or_doubled(topics, namespace, kafka_settings, codec, tmp_path):
    replay = banking77_calls(3000, prefix="k")
    a = start_worker("curator", namespace, kafka_settings, tmp_path, tag="a")
    b = start_worker("curator", namespace, kafka_settings, tmp_path, tag="b")
    try:
        def both_assigned():
            return all(w.get("/curator/stats/") is not None for w in (a, b))

        await wait_for(both_assigned, 90, "both workers serving", a)
        # half the calls before the kill, half after: the kill always falls mid-stream, however fast the
        # workers are (a batch processor can finish a slow feed before the probe sees progress)
        topic = topic_name(CALLS_CAPTURED, namespace)
        await feed_slowly(kafka_settings, codec, topic, replay.calls[:1500])

        def progress():
            done = [w.get("/curator/stats/").get(BANKING, {}).get("calls", 0) for w in (a, b)]
            return done if done[0] >= 300 else None  # a is working: kill it now

        await wait_for(progress, 120, "progress on the worker to kill", a, interval=0.1)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        await feed_slowly(kafka_settings, codec, topic, replay.calls[1500:])

        last: list = []

        def survivor_has_everything():
            stats = b.get("/curator/stats/")
            last[:] = [stats]
            return stats if stats.get(BANKING, {}).get("calls") == 3000 else None

        try:
            stats = await wait_for(survivor_has_everything, 180, "the survivor to own all 3000 calls", b)
        except AssertionError as exc:
            raise AssertionError(f"survivor stats: {last}") from exc
        distinct = {input_hash(BANKING, normalise_input(c.input)) for c in replay.calls}
        assert stats[BANKING]["inputs"] == len(distinct)
        assert stats[BANKING]["duplicate_calls"] == 3000 - len(distinct)
        assert stats[BANKING]["holdout"] == sum(split_of(BANKING, c.input, 0.15) == "holdout" for c in replay.calls)

        await assert_state_counts_each_call_once(kafka_settings, namespace, replay.calls)
        # the survivor rebuilt the killed worker's shards from the dataset topic: each call counted once
        from tests.integration.test_curator_worker import wait_for_dataset
        await wait_for_dataset(kafka_settings, codec, namespace, {BANKING: 3000}, b)
    finally:
        rc = stop_worker(b)
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
    assert rc == 0, b.tail()
