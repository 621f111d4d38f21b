"""Two profiler workers share the partitions; one is SIGKILLed mid-stream; every call is counted once.

The effect checked is the table `profiles` (one Profile per task and source partition, with the
last offset applied): the survivor's view must count exactly the calls produced.
"""
from __future__ import annotations

import signal

import pytest

from services.common.catalog import CALLS_CAPTURED, topic_name
from tests.integration.test_workers import feed_slowly, BANKING, banking77_calls, start_worker, stop_worker, wait_for

pytestmark = pytest.mark.integration


def counted(worker) -> int:
    return sum(c["measures"]["calls"] for c in worker.get("/profiler/candidates/") if c["task"] == BANKING)


async def test_two_profilers_one_killed_every_call_counted_once(topics, namespace, kafka_settings, codec, tmp_path):
    replay = banking77_calls(3000, prefix="q")
    a = start_worker("profiler", namespace, kafka_settings, tmp_path, tag="a")
    b = start_worker("profiler", namespace, kafka_settings, tmp_path, tag="b")
    try:
        await wait_for(lambda: all(w.get("/profiler/candidates/") is not None for w in (a, b)), 90, "both up", a)
        # half the calls before the kill, half after: the kill always falls mid-stream, however fast the
        # workers are (a batch processor can finish a slow feed before the probe sees progress)
        topic = topic_name(CALLS_CAPTURED, namespace)
        await feed_slowly(kafka_settings, codec, topic, replay.calls[:1500])

        def progress():
            done = [counted(w) for w in (a, b)]
            return done if done[0] >= 300 else None  # a is working: kill it now

        await wait_for(progress, 120, "progress on the worker to kill", a, interval=0.1)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        await feed_slowly(kafka_settings, codec, topic, replay.calls[1500:])
        last: list = []

        def survivor_counts_all():
            last[:] = [counted(b)]
            return last[0] >= 3000

        try:
            await wait_for(survivor_counts_all, 180, "the survivor to count 3000 calls", b)
        except AssertionError as exc:
            raise AssertionError(f"survivor counted {last}") from exc
        # read once: a rebalance between two reads (the outcomes' consumer re-joining) empties the page for a moment
        live = await wait_for(lambda: next((c for c in b.get("/profiler/candidates/")
                                            if c["task"] == BANKING and c["measures"]["calls"] == 3000), None),
                              10, "exactly 3000", b)
        assert live["measures"]["parse_failure_rate"] == pytest.approx(len(replay.parse_failures) / 3000, abs=1e-4)
    finally:
        rc = stop_worker(b)
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
    assert rc == 0, b.tail()
