"""The capture client without a broker: nothing blocks or raises; records spool; call_ids dedupe.

Kafka "unreachable" here is a real closed port on loopback (no mock). The behaviour against the
real broker, including an outage, is in tests/integration/test_capture_client.py and
tests/integration/test_router_kafka_outage.py.
"""
from __future__ import annotations

import socket
import time

from services.capture import CaptureClient, CaptureSettings
from services.common.catalog import ROUTER_OUTCOMES
from services.common.contracts import CapturedCall, RouterOutcome
from services.common.settings import KafkaSettings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make(tmp_path, **overrides) -> CaptureClient:
    settings = CaptureSettings(spool_dir=tmp_path / "spool", reconnect_backoff_s=0.2, stop_timeout_s=0.5, **overrides)
    return CaptureClient(KafkaSettings(bootstrap=f"127.0.0.1:{closed_port()}"), name="unit", namespace="u.",
                         settings=settings)


def fields(i: int) -> dict:
    return dict(call_id=f"call-{i:04d}", task="banking77-intent", input=f"text {i}", output_raw="card_arrival",
                output="card_arrival", latency_ms=5.0)


def test_kafka_unreachable_spools_everything_without_blocking(tmp_path):
    client = make(tmp_path).start()
    start = time.perf_counter()
    ids = [client.record_call(**fields(i)) for i in range(200)]
    elapsed = time.perf_counter() - start
    deadline = time.monotonic() + 10
    while client.stats().spool_records < 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = client.stats()
    client.stop()
    assert elapsed < 0.5, f"record_call blocked: {elapsed:.3f} s for 200 calls"
    assert ids == [f"call-{i:04d}" for i in range(200)]
    assert stats.spool_records == 200 and stats.delivered == 0
    assert stats.state in ("connecting", "spooling")


def test_spooled_records_outlive_the_client_in_order(tmp_path):
    client = make(tmp_path).start()
    for i in range(5):
        client.record_call(CapturedCall(**fields(i)))
    client.stop()
    again = make(tmp_path)
    keys = [r.key for r, _ in again.spool.read(100)]
    again.stop()
    assert keys == [f"call-{i:04d}".encode() for i in range(5)]


def test_a_call_id_is_captured_once(tmp_path):
    client = make(tmp_path).start()
    client.record_call(**fields(1))
    client.record_call(**fields(1))
    client.record_call(CapturedCall(**fields(1)))
    client.publish(ROUTER_OUTCOMES, "call-0001", RouterOutcome(call_id="call-0001", task="t", mode="frontier",
                                                                served_by="frontier", latency_ms=1.0))
    deadline = time.monotonic() + 10
    while client.stats().spool_records < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = client.stats()
    client.stop()
    assert stats.duplicates_ignored == 2
    assert stats.spool_records == 2  # one CapturedCall and one RouterOutcome


def test_records_before_start_or_after_stop_are_spooled_not_lost(tmp_path):
    client = make(tmp_path)
    client.record_call(**fields(1))
    client.start()
    client.stop()
    client.record_call(**fields(2))
    assert client.stats().spool_records == 2
    client.stop()


def test_a_full_spool_drops_and_counts(tmp_path):
    client = make(tmp_path, spool_max_bytes=2048).start()
    for i in range(50):
        client.record_call(**fields(i))
    deadline = time.monotonic() + 10
    while sum(client.stats().dropped.values()) + client.stats().spool_records < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = client.stats()
    client.stop()
    assert stats.dropped.get("spool_full", 0) > 0
    assert stats.spool_bytes <= 2048
    assert stats.spool_records + stats.dropped["spool_full"] == 50


def test_generates_a_call_id_when_none_is_given(tmp_path):
    client = make(tmp_path)
    call_id = client.record_call(task="t", input="x", output_raw="y", latency_ms=1.0)
    client.stop()
    assert len(call_id) == 32


def test_dead_letters_get_reason_and_processor_headers_other_records_none(tmp_path):
    from services.capture.sender import Sender
    from services.capture.spool import SpoolRecord
    from services.common.catalog import DEADLETTER, topic_name
    from services.common.kafka import dead_letter

    client = make(tmp_path)
    sender = Sender(client)
    letter = dead_letter("u.graduate.routing.decisions", 2, 17, "router", ValueError("mode 'fast' is unknown"),
                         b"k", b"payload")
    record = SpoolRecord(topic_name(DEADLETTER, "u."), b"k", client.codec.encode(letter))
    assert sender.headers_for(record) == [("reason", b"mode 'fast' is unknown"), ("processor", b"router")]
    outcome = RouterOutcome(call_id="c1", task="banking77-intent", mode="frontier", served_by="frontier", latency_ms=1.0)
    assert sender.headers_for(SpoolRecord(topic_name(ROUTER_OUTCOMES, "u."), b"c1", client.codec.encode(outcome))) is None
    assert sender.headers_for(SpoolRecord(topic_name(DEADLETTER, "u."), b"k", b"not avro")) is None
    client.stop()


def test_records_are_handed_over_in_batches_without_a_wake_up_per_call(tmp_path):
    client = make(tmp_path, batch_size=5, linger_s=0.05).start()
    wakes = []
    loop = client._loop
    real = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *a, **kw: wakes.append(a) or real(*a, **kw)
    for i in range(4):
        client.record_call(**fields(i))
    assert wakes == []  # below a batch: the sender takes them when linger_s has passed
    client.record_call(**fields(4))
    assert len(wakes) == 1  # a full batch wakes it once
    deadline = time.monotonic() + 10
    while client.stats().spool_records < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = client.stats()
    client.stop()
    assert stats.spool_records == 5 and stats.queued == 0


def test_a_record_given_as_a_builder_is_built_in_the_sender_thread(tmp_path):
    import threading

    client = make(tmp_path).start()
    built_in: list[str] = []

    def outcome() -> RouterOutcome:
        built_in.append(threading.current_thread().name)
        return RouterOutcome(call_id="call-0001", task="t", mode="small", served_by="small", latency_ms=1.0)

    def broken() -> RouterOutcome:
        raise ValueError("a bug in a builder")

    assert client.publish(ROUTER_OUTCOMES, "call-0001", outcome)
    assert client.publish(ROUTER_OUTCOMES, "call-0002", broken)  # never raises into the caller
    deadline = time.monotonic() + 10
    while client.stats().spool_records < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.stop()
    assert built_in == ["capture-unit"]
    again = make(tmp_path)
    [(record, _)] = again.spool.read(10)
    again.stop()
    assert record.key == b"call-0001"
    assert client.stats().dropped == {"build_error": 1}


def test_a_deferred_call_is_built_redacted_and_deduplicated_in_the_sender_thread(tmp_path):
    import threading

    from services.common.codec import Codec

    client = make(tmp_path).start()
    built_in: list[str] = []

    def call() -> CapturedCall:
        built_in.append(threading.current_thread().name)
        return CapturedCall(**fields(7) | {"input": "mail jane.doe@example.com about my card"})

    assert client.defer_call("call-0007", call)
    assert not client.defer_call("call-0007", call)  # the same call_id: ignored, never built
    deadline = time.monotonic() + 10
    while client.stats().spool_records < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.stop()
    assert built_in == ["capture-unit"] and client.stats().duplicates_ignored == 1
    again = make(tmp_path)
    [(record, _)] = again.spool.read(10)
    again.stop()
    captured = Codec().decode(record.value, CapturedCall)
    assert record.key == b"call-0007" and captured.redacted and "jane.doe" not in captured.input
