"""Record sizes at the curator: a captured call larger than the worker's own producer may send is
counted like any other, and its dataset record — too large to send — is dead-lettered alone with
the reason instead of failing the batch again and again (BatchProcessor.send); a worker whose
records the topics would refuse does not start.

(The agents' path, where a result too large to send is dead-lettered alone, is
services/common/streams.handle_alone.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from services.common.catalog import CALLS_CAPTURED, DEADLETTER, topic_name
from services.common.contracts import DeadLetter
from tests.integration.test_workers import BANKING, banking77_calls, metric, start_worker, stop_worker, wait_for
from tests.support import decode_all, produce, read_topic

pytestmark = pytest.mark.integration

WORKER_MAX_MESSAGE_BYTES = 256 * 1024  # the worker's one size setting; the topics keep the default 1 MiB


async def test_an_oversized_captured_call_is_counted_and_only_its_dataset_record_is_dead_lettered(
        topics, namespace, kafka_settings, codec, tmp_path: Path):
    calls = banking77_calls(600, duplicates=0, conflicts=0, parse_failures=0).calls
    big = calls[300] = calls[300].model_copy(update={"input": "my card has not arrived " * 13_000})  # ~312 KB
    assert len(codec.encode(big)) > WORKER_MAX_MESSAGE_BYTES
    await produce(kafka_settings, codec, topic_name(CALLS_CAPTURED, namespace), [(c.call_id, c) for c in calls])

    worker = start_worker("curator", namespace, kafka_settings, tmp_path,
                          GRADUATE_KAFKA_MAX_MESSAGE_BYTES=str(WORKER_MAX_MESSAGE_BYTES),
                          GRADUATE_CURATOR_BATCH_SIZE="64")
    try:
        def handled():
            stats = worker.get("/curator/stats/").get(BANKING, {})
            return stats if stats.get("calls") == 600 else None

        stats = await wait_for(handled, 240, "the curator to take in 600 calls", worker)
        assert stats["inputs"] == 600 and stats["usable"] == 600
        text = worker.get("/metrics")
        assert metric(text, "graduate_processor_processed_total", processor="curator") == 600
        assert metric(text, "graduate_processor_deadletter_total", processor="curator") == 1
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()
    letters = decode_all(codec, await read_topic(kafka_settings, topic_name(DEADLETTER, namespace), min_count=1,
                                                 timeout=30), DeadLetter)
    assert len(letters) == 1 and letters[0].processor == "curator", letters
    assert "graduate.dataset record" in letters[0].reason and "not sent, dead-lettered" in letters[0].reason
    assert letters[0].payload_truncated  # the letter itself fits


async def test_a_worker_whose_records_the_topics_would_refuse_does_not_start(topics, namespace, kafka_settings,
                                                                            tmp_path: Path):
    worker = start_worker("curator", namespace, kafka_settings, tmp_path,
                          GRADUATE_KAFKA_MAX_MESSAGE_BYTES=str(4 * kafka_settings.max_message_bytes))
    try:
        rc = worker.proc.wait(120)
    finally:
        stop_worker(worker)
    assert rc != 0
    assert "size limits disagree with the broker" in worker.tail() and "max.message.bytes" in worker.tail()
