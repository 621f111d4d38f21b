"""The batch processor loop without a broker: naming, the state record, and what one batch does to
the partition states (the producer is a stand-in that records what would be sent)."""
from __future__ import annotations

import asyncio
from collections import namedtuple

from services.common import catalog
from services.common.batch import BatchProcessor, Fold, PartitionState, read_state_record, state_record, state_topic
from services.common.codec import Codec
from services.common.contracts import CapturedCall, DeadLetter
from services.common.streams import WorkerSettings, make_app, plumbing

Record = namedtuple("Record", "topic partition offset key value timestamp headers")


def call(call_id: str, task: str = "t1") -> CapturedCall:
    return CapturedCall(call_id=call_id, task=task, input="where is my card?", output_raw="card_arrival",
                        output="card_arrival", latency_ms=5.0)


class Sent:
    """Records what the processor would send; every send is delivered at once."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    async def send(self, topic, key=None, value=None, headers=None, partition=None):
        self.records.append((topic, key, value, partition))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def count_tasks(state: dict, items) -> None:
    if any(i.value.task == "boom" for i in items):
        state["half-done"] = True  # a step that raises midway must leave nothing behind
        raise ValueError("cannot count boom")
    for i in items:
        state[i.value.task] = state.get(i.value.task, 0) + 1


def processor(tmp_path):
    app = make_app("counter", WorkerSettings(topic_namespace="tb.", var_dir=tmp_path))
    proc = BatchProcessor(app, catalog.CALLS_CAPTURED, CapturedCall, count_tasks, Fold(dict, dict, dict))
    proc.producer = Sent()
    return app, proc


def records(codec: Codec, partition: int, first: int, calls: list) -> list[Record]:
    topic = "tb." + catalog.CALLS_CAPTURED.name
    return [Record(topic, partition, first + n, c.call_id.encode() if isinstance(c, CapturedCall) else b"x",
                   codec.encode(c) if isinstance(c, CapturedCall) else c, 0, ()) for n, c in enumerate(calls)]


def test_state_topic_and_record():
    assert state_topic("curator", "ns.", catalog.CALLS_CAPTURED) == "ns.graduate-curator-calls.captured-state"
    assert read_state_record(state_record(42, {"t": 1})) == (42, {"t": 1})
    assert read_state_record(None) == (None, None)


def test_processor_registers_its_state_topic_and_runs_faust_without_a_consumer(tmp_path):
    app, proc = processor(tmp_path)
    plumb = plumbing(app)
    assert app.producer_only  # faust serves pages and timers; the processor consumes
    assert plumb.internal[proc.state_topic] == (catalog.CALLS_CAPTURED.partitions,
                                                {"cleanup.policy": "compact", "segment.ms": "600000",
                                                 "min.cleanable.dirty.ratio": "0.1"})
    assert proc.topic in plumb.sources and plumb.processors == [proc]
    assert "state calls.captured not restored" in plumb.health.readiness()


async def test_a_batch_folds_new_records_skips_replayed_ones_and_dead_letters_the_bad(tmp_path):
    app, proc = processor(tmp_path)
    codec = plumbing(app).codec
    proc.states = {0: PartitionState({"t1": 5}, 10, {"t1": 5}), 1: PartitionState({}, None)}
    tp0, tp1 = namedtuple("TP", "topic partition")("x", 0), namedtuple("TP", "topic partition")("x", 1)
    batch = {tp0: records(codec, 0, 8, [call("old1"), call("old2"), call("a"), call("b")]),  # 8, 9 already counted
             tp1: records(codec, 1, 0, [call("c", task="t2"), b"not avro"])}
    await proc.handle(batch)
    assert proc.states[0].value == {"t1": 7} and proc.states[0].next_offset == 12
    assert proc.states[1].value == {"t2": 1} and proc.states[1].next_offset == 2
    letters = [codec.decode(v, DeadLetter) for topic, _, v, _ in proc.producer.records]
    assert [(d.partition, d.offset) for d in letters] == [(1, 1)]


async def test_a_step_that_raises_dead_letters_its_items_and_keeps_the_last_written_state(tmp_path):
    app, proc = processor(tmp_path)
    codec = plumbing(app).codec
    proc.states = {0: PartitionState({"t1": 5}, 3, {"t1": 5})}
    await proc.handle({namedtuple("TP", "topic partition")("x", 0): records(codec, 0, 3, [call("a"), call("z", "boom")])})
    assert proc.states[0].value == {"t1": 5} and proc.states[0].next_offset == 5
    letters = [codec.decode(v, DeadLetter) for _, _, v, _ in proc.producer.records]
    assert [d.offset for d in letters] == [3, 4] and "cannot count boom" in letters[0].reason


async def test_checkpoint_writes_changed_partitions_with_their_offsets(tmp_path):
    app, proc = processor(tmp_path)

    class Commits:
        def __init__(self):
            self.offsets = None

        async def commit(self, offsets):
            self.offsets = offsets

    proc.consumer = Commits()
    proc.states = {0: PartitionState({"t1": 7}, 12, None, dirty=True), 1: PartitionState({"t2": 1}, 2, {"t2": 1})}
    await proc.checkpoint()
    assert proc.producer.records == [(proc.state_topic, b"0", state_record(12, {"t1": 7}), 0)]
    assert not proc.states[0].dirty and proc.states[0].saved == {"t1": 7}
    assert {tp.partition: o for tp, o in proc.consumer.offsets.items()} == {0: 12}


def test_a_source_with_more_partitions_than_its_state_topic_is_named(tmp_path):
    from services.common.batch import state_partition_problems

    _, proc = processor(tmp_path)
    assert state_partition_problems({proc.topic: 12, proc.state_topic: 12}, [proc]) == []
    [problem] = state_partition_problems({proc.topic: 24, proc.state_topic: 12}, [proc])
    assert problem == f"{proc.state_topic} has 12 partitions, {proc.topic} has 24: add partitions to {proc.state_topic} first"
    proc.aligned = ("t.graduate.dataset",)  # a topic written per source partition is held to the same count
    [problem] = state_partition_problems({proc.topic: 12, proc.state_topic: 12, "t.graduate.dataset": 2}, [proc])
    assert problem == f"t.graduate.dataset has 2 partitions, {proc.topic} has 12: add partitions to t.graduate.dataset first"
