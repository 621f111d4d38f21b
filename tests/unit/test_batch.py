"""The batch processor loop without a broker: naming, the state record, and what one batch does to
the partition states (the producer is a stand-in that records what would be sent)."""
from __future__ import annotations

import asyncio
from collections import namedtuple

from aiokafka.producer.message_accumulator import BatchBuilder

from services.common import catalog
from services.common.batch import BatchProcessor, Fold, PartitionState, read_state_record, state_record, state_topic
from services.common.codec import Codec
from services.common.contracts import CapturedCall, DeadLetter
from services.common.streams import Emit, WorkerSettings, make_app, plumbing

Record = namedtuple("Record", "topic partition offset key value timestamp headers")


def call(call_id: str, task: str = "t1") -> CapturedCall:
    return CapturedCall(call_id=call_id, task=task, input="where is my card?", output_raw="card_arrival",
                        output="card_arrival", latency_ms=5.0)


class Sent:
    """Records what the processor would send; every send is delivered at once. Record batches are
    aiokafka's own builders (of `batch_bytes`), read back when sent."""

    def __init__(self, batch_bytes: int = 16384) -> None:
        self.records: list[tuple] = []
        self.batches: list[tuple[str, int, int]] = []  # (topic, partition, records)
        self.batch_bytes = batch_bytes

    async def send(self, topic, key=None, value=None, headers=None, partition=None):
        self.records.append((topic, key, value, partition))
        return self.delivered()

    def create_batch(self):
        return BatchBuilder(self.batch_bytes, 0)  # 0: no compression

    async def send_batch(self, builder, topic, *, partition):
        records = [r for batch in DefaultRecordBatch_of(builder) for r in batch]
        self.records += [(topic, r.key, r.value, partition) for r in records]
        self.batches.append((topic, partition, len(records)))
        return self.delivered()

    @staticmethod
    def delivered():
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def DefaultRecordBatch_of(builder):
    """The records a closed BatchBuilder holds, as the broker would read them."""
    from aiokafka.record.default_records import DefaultRecordBatch

    buffer = builder._build()
    return [DefaultRecordBatch(bytes(buffer))]


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


async def test_emits_to_a_chosen_partition_go_in_record_batches_in_order_and_the_rest_one_by_one(tmp_path):
    app, proc = processor(tmp_path)
    proc.producer = Sent(batch_bytes=4096)  # ~40 of these records a batch: the builder fills and rolls over
    spec = catalog.DATASET
    outbox = [(Emit(spec, f"k{i}", b"v%03d" % i + b"." * 80, partition=i % 2), None) for i in range(200)]
    outbox.insert(100, (Emit(spec, "large", b"L" * 10_000, partition=0), None))  # over a batch: one of its own
    outbox.append((Emit(catalog.DEADLETTER, "dl", call("x")), None))  # a model, partitioned by key: sent alone
    futures = await proc.send_many(outbox)
    assert len(futures) == len(proc.producer.batches) + 1
    topic = "tb." + spec.name
    for p in (0, 1):
        sent = [(k, v[:4]) for t, k, v, part in proc.producer.records if t == topic and part == p]
        want = [(f"k{i}".encode(), b"v%03d" % i) for i in range(p, 200, 2)]  # every one, in order
        if p == 0:
            want.insert(50, (b"large", b"LLLL"))
        assert sent == want
        assert sum(n for t, part, n in proc.producer.batches if part == p) == len(want)
    assert max(n for _, _, n in proc.producer.batches) < 100  # more than one batch per partition
    assert [(t, k) for t, k, _, part in proc.producer.records if part is None] == [("tb.graduate.deadletter", b"dl")]


async def test_an_oversized_emit_to_a_chosen_partition_is_dead_lettered_alone(tmp_path):
    app, proc = processor(tmp_path)
    codec = plumbing(app).codec
    source = records(codec, 3, 41, [call("big")])[0]
    from services.common.streams import Meta

    meta = Meta(source.topic, 3, 41, b"big", 0.0)
    limit = proc.record_limit()
    outbox = [(Emit(catalog.DATASET, "small", b"s", partition=3), meta),
              (Emit(catalog.DATASET, "huge", b"h" * (limit + 1), partition=3), meta)]
    await proc.send_many(outbox)
    assert [(t, k, part) for t, k, _, part in proc.producer.records] == [
        ("tb.graduate.deadletter", b"big", None), ("tb." + catalog.DATASET.name, b"small", 3)]
    letter = codec.decode(proc.producer.records[0][2], DeadLetter)
    assert letter.offset == 41 and "over the" in letter.reason
