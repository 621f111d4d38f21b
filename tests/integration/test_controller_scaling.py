"""Controllers scale with the outcome partitions: two replicas in one group split the tasks and
together decide what one controller decides (real broker, real `graduate worker controller`s),
the sampled frontier answers (captured calls keyed by call_id) reaching their task's owner too."""
from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import httpx
import pytest

from services.common import catalog
from services.common.catalog import CATALOG, topic_name
from services.common.contracts import CapturedCall, RouterOutcome, RoutingDecision, utcnow
from services.common.kafka import delete_topics, ensure_topics
from services.controller.ownership import task_partition
from tests.integration.test_controller import ControllerWorker, env  # noqa: F401 - env is a fixture
from tests.support import decode_all, produce, read_topic
from tests.unit.test_gate import registered, shadow_stats

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# six tasks over at least three of the twelve outcome partitions; after the cutover two drift (the
# fallback rate climbs) and one's sampled answers disagree with the frontier's
TASKS = [f"scale-{c}" for c in "abcdef"]
DRIFTING = {"scale-b", "scale-e"}
DISAGREEING = "scale-c"


def test_the_tasks_spread_over_partitions():
    assert len({task_partition(t, catalog.ROUTER_OUTCOMES.partitions) for t in TASKS}) >= 3


def outcomes(task: str, start: int, count: int, fallback: bool, sampled: bool = False) -> list[tuple[str, RouterOutcome]]:
    now = utcnow() + timedelta(seconds=2)
    out = []
    for i in range(start, start + count):
        low = fallback or i % 5 == 0
        o = RouterOutcome(call_id=f"{task}-{i}", task=task, mode="small", served_by="fallback" if low else "small",
                          model_version="v1", confidence=0.3 if low else 0.92, threshold=0.62,
                          fallback_reason="low_confidence" if low else None, latency_ms=9.0, output="card_arrival",
                          sampled=sampled and not low, ts=now + timedelta(milliseconds=i))
        out.append((task, o))  # keyed by task, as the router does
    return out


def sampled_answers(task: str, count: int) -> list[tuple[str, CapturedCall]]:
    """The frontier's answers to the sampled calls (keyed by call_id, as captured): every other one differs."""
    return [(f"{task}-{i}", CapturedCall(call_id=f"{task}-{i}", task=task, input=f"where is my card {i}",
                                         output_raw="x", output="lost_card" if i % 2 else "card_arrival",
                                         latency_ms=500.0, source="sampled"))
            for i in range(count) if i % 5]


async def state_of(worker: ControllerWorker) -> dict:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{worker.port}/controller/state/")).json()


async def decided_here(workers: list[ControllerWorker], timeout: float = 150.0) -> list[set[str]]:
    """Each worker's tasks once every test task has exactly one owner and every worker has some."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = [await state_of(w) for w in workers]
            mine = [{t for t in TASKS if s.get(t, {}).get("decided_here")} for s in states]
            if all(mine) and sum(len(m) for m in mine) == len(TASKS) and set().union(*mine) == set(TASKS):
                return mine
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the tasks were not split: " + " / ".join(w.tail()[-1500:] for w in workers))
        await asyncio.sleep(1.0)


async def settled(workers: list[ControllerWorker], timeout: float = 150.0) -> None:
    """Every worker ready and holding some of the 24 source partitions (outcomes and captured calls)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                ready = [(await client.get(f"http://127.0.0.1:{w.port}/readyz")).json() for w in workers]
            held = [r["partitions"] for r in ready]
            if all(r["ready"] for r in ready) and all(held) and sum(held) == 2 * catalog.ROUTER_OUTCOMES.partitions:
                return
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("no settled group: " + " / ".join(w.tail()[-1500:] for w in workers))
        await asyncio.sleep(1.0)


async def drive(kafka, codec, namespace: str, workers: list[ControllerWorker]) -> dict[str, list[tuple]]:
    """The same inputs for every task; what the routing topic and the history say, per task."""
    ns = lambda spec: topic_name(spec, namespace)  # noqa: E731
    await settled(workers)
    await produce(kafka, codec, ns(catalog.MODELS), [(f"{t}/v1", registered("v1", task=t)) for t in TASKS])
    await read_topic(kafka, ns(catalog.ROUTING_DECISIONS), min_count=len(TASKS), timeout=90)
    mine = await decided_here(workers)
    await produce(kafka, codec, ns(catalog.SHADOW_STATS), [(f"{t}/v1", shadow_stats("v1", task=t)) for t in TASKS])
    await read_topic(kafka, ns(catalog.ROUTING_DECISIONS), min_count=2 * len(TASKS), timeout=90)
    await produce(kafka, codec, ns(catalog.ROUTER_OUTCOMES),
                  [o for t in TASKS for o in outcomes(t, 0, 60, False, sampled=t == DISAGREEING)
                   + outcomes(t, 60, 120 if t in DRIFTING else 40, t in DRIFTING)])
    await produce(kafka, codec, ns(catalog.CALLS_CAPTURED), sampled_answers(DISAGREEING, 60))
    await read_topic(kafka, ns(catalog.ROUTING_DECISIONS), min_count=2 * len(TASKS) + len(DRIFTING) + 1, timeout=90)
    await asyncio.sleep(3)  # anything more (a second verdict) would arrive now
    assert all(w.alive() for w in workers), [w.tail() for w in workers]
    assert [await decided_here(workers, 10)] == [mine]  # no task moved meanwhile
    out: dict[str, list[tuple]] = {}
    for spec in (catalog.ROUTING_DECISIONS, catalog.ROUTING_HISTORY):
        for d in decode_all(codec, await read_topic(kafka, ns(spec), timeout=5), RoutingDecision):
            ev = json.loads(d.evidence or "{}")
            demoted_for = "sampled" if "sampled agreement" in d.reason else "fallback" if "fallback rate" in d.reason \
                else None
            out.setdefault(f"{spec.name}:{d.task}", []).append((d.mode, d.model_version, ev.get("gate"),
                                                               ev.get("verdict"), demoted_for if ev.get("gate") == "watch"
                                                               else None))
    return out


async def test_two_controllers_split_the_tasks_and_decide_as_one(kafka_settings, codec, env, tmp_path):
    env = {**env, "GRADUATE_CONTROLLER_MIN_SAMPLED": "20", "GRADUATE_CONTROLLER_SAMPLED_WINDOW": "40"}
    results, splits = [], []
    for replicas in (1, 2):
        namespace = f"{env['GRADUATE_TOPIC_NAMESPACE']}{replicas}."
        await ensure_topics(kafka_settings, namespace)
        workers = [ControllerWorker({**env, "GRADUATE_TOPIC_NAMESPACE": namespace},
                                    tmp_path / f"{replicas}-{i}") for i in range(replicas)]
        for w in workers:
            w.folder.mkdir()
            w.start()
        try:
            results.append(await drive(kafka_settings, codec, namespace, workers))
            splits.append(await decided_here(workers, 10))
        finally:
            for w in workers:
                w.stop()
            await delete_topics(kafka_settings, [topic_name(s, namespace) for s in CATALOG])
    one, two = results
    assert two == one
    for t in TASKS:
        drifted = [("shadow", "v1", "watch", "demoted", "fallback")] if t in DRIFTING else \
            [("shadow", "v1", "watch", "demoted", "sampled")] if t == DISAGREEING else []
        assert one[f"graduate.routing.decisions:{t}"] == [("shadow", "v1", "offline", "pass", None),
                                                          ("small", "v1", "shadow", "pass", None)] + drifted
    a, b = splits[1]
    assert a and b and not a & b and a | b == set(TASKS)
    for owner in (a, b):  # each replica owns whole partitions
        parts = {task_partition(t, catalog.ROUTER_OUTCOMES.partitions) for t in owner}
        assert not parts & {task_partition(t, catalog.ROUTER_OUTCOMES.partitions) for t in set(TASKS) - owner}
