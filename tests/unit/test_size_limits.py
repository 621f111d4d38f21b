"""One size setting: router body < producer max.request.size < topic max.message.bytes, checked."""
from __future__ import annotations

import pytest

from services.common.catalog import CALLS_CAPTURED
from services.common.kafka import dead_letter, dead_letter_payload_limit, find_drift, make_producer, topic_config
from services.common.settings import KafkaSettings, size_limits


@pytest.mark.parametrize("m", [64 * 1024, 1 << 20, 8 << 20])
def test_the_chain_holds_for_any_setting(m):
    limits = size_limits(m)
    assert limits.body_bytes < limits.request_bytes < limits.topic_bytes == m
    assert 2 * limits.body_bytes < limits.request_bytes  # a record carries the input once plus the answer
    limits.check()


def test_a_body_limit_over_the_derived_one_is_refused():
    limits = size_limits(1 << 20)
    with pytest.raises(ValueError, match="size limits disagree"):
        limits.check(limits.request_bytes)


async def test_topics_are_created_with_the_limit_and_producers_send_below_it():
    kafka = KafkaSettings(max_message_bytes=2 << 20)
    assert topic_config(CALLS_CAPTURED, kafka)["max.message.bytes"] == str(2 << 20)
    producer = make_producer(kafka)
    try:
        assert producer._max_request_size == kafka.limits.request_bytes < 2 << 20
    finally:
        await producer.stop()


def test_a_topic_limit_at_or_below_the_producers_is_drift():
    m = 1 << 20
    ok = {**CALLS_CAPTURED.config(), "max.message.bytes": str(m)}
    assert find_drift(CALLS_CAPTURED, 12, ok, m) == []
    low = {**ok, "max.message.bytes": str(size_limits(m).request_bytes)}
    assert "max.message.bytes" in find_drift(CALLS_CAPTURED, 12, low, m)[0]


def test_a_dead_letter_of_a_large_record_fits_what_producers_send():
    kafka = KafkaSettings(max_message_bytes=64 * 1024)
    limit = dead_letter_payload_limit(kafka)
    letter = dead_letter("t", 0, 1, "curator", ValueError("too large"), b"k", b"x" * 500_000, limit)
    assert len(letter.payload) == limit < kafka.limits.request_bytes and letter.payload_truncated
