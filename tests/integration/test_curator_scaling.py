"""Two curator workers share the partitions; one is SIGKILLed mid-stream; nothing is lost or doubled.

The effect checked is the curator's table `calls` ("<task>:<input hash>:<call_id>" -> label,
split), read back from its changelog and from the surviving worker's stats, against the calls
produced.
"""
from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter

import pytest

from services.common.catalog import CALLS_CAPTURED, topic_name
from services.common.normalize import input_hash, normalise_input, split_of
from services.common.streams import changelog_topic
from tests.integration.test_workers import (feed_slowly, BANKING, banking77_calls, start_worker, stop_worker, wait_for)
from tests.support import read_topic

pytestmark = pytest.mark.integration


def latest_by_key(records) -> dict:
    out = {}
    for r in records:  # read_topic returns each partition in offset order
        out[json.loads(r.key)] = None if r.value is None else json.loads(r.value)
    return out


async def test_two_workers_one_killed_nothing_lost_or_doubled(topics, namespace, kafka_settings, codec, tmp_path):
    replay = banking77_calls(3000, prefix="k")
    a = start_worker("curator", namespace, kafka_settings, tmp_path, tag="a")
    b = start_worker("curator", namespace, kafka_settings, tmp_path, tag="b")
    try:
        def both_assigned():
            return all(w.get("/curator/stats/") is not None for w in (a, b))

        await wait_for(both_assigned, 90, "both workers serving", a)
        feeder = asyncio.create_task(feed_slowly(kafka_settings, codec, topic_name(CALLS_CAPTURED, namespace),
                                                 replay.calls))

        def progress():
            done = [w.get("/curator/stats/").get(BANKING, {}).get("calls", 0) for w in (a, b)]
            return done if done[0] >= 300 else None  # a is working: kill it now

        seen = await wait_for(progress, 120, "progress on the worker to kill", a, interval=0.1)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        assert sum(seen) < 3000, "everything was processed before the kill; nothing was tested"
        await feeder

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

        table = latest_by_key(await read_topic(kafka_settings, changelog_topic("curator", namespace, "calls"),
                                               min_count=3000))
        owners = Counter(key.rsplit(":", 1)[1] for key in table)
        assert set(owners) == {c.call_id for c in replay.calls} and set(owners.values()) == {1}
        by_id = {c.call_id: c for c in replay.calls}
        for key, entry in table.items():
            call = by_id[key.rsplit(":", 1)[1]]
            assert key.split(":")[1] == input_hash(BANKING, normalise_input(call.input)).hex()
            assert entry["label"] == call.output and entry["split"] == split_of(BANKING, call.input, 0.15)
    finally:
        rc = stop_worker(b)
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
    assert rc == 0, b.tail()
