"""`graduate dataset forget` on the real broker with a real curator: the input leaves the dataset
topic and the snapshot, and a replay of the older captured calls that carry it does not bring it back."""
from __future__ import annotations

import dataclasses
import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from services.common.batch import state_topic
from services.common.catalog import CALLS_CAPTURED, topic_name
from services.common.settings import REPO_ROOT, CommonSettings
from services.common.tasks import load_tasks
from services.curator.dataset import live_records
from services.curator.forget import hash_of_input
from services.curator.snapshot import read_snapshot, read_sources
from tests.integration.test_curator_worker import run_cli, wait_for_dataset
from tests.integration.test_workers import (BANKING, banking77_calls, start_worker, stop_worker, wait_for,
                                            worker_env)
from tests.support import produce

pytestmark = pytest.mark.integration


async def raw_hashes(kafka, codec, namespace: str) -> Counter:
    """Hashes with a live record in the dataset topic, tombstones applied but forgotten keys NOT
    filtered out (what a consumer of the topic sees)."""
    data = await read_sources(CommonSettings(kafka=kafka, topic_namespace=namespace), codec)
    return Counter(r.normalised_hash for r in live_records(data.records.records))


async def state_records(kafka, namespace: str) -> int:
    """Records in the curator's state topic (none: no checkpoint was written)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    name = state_topic("curator", namespace, CALLS_CAPTURED)
    consumer = AIOKafkaConsumer(**kafka.client_config())
    await consumer.start()
    try:
        assert name in await consumer.topics(), f"{name} does not exist"
        tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def test_forget_removes_an_input_and_a_replay_keeps_it_gone(topics, namespace, kafka_settings, codec,
                                                                   tmp_path: Path):
    spec = load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(BANKING)
    replay = banking77_calls(300, prefix="f", duplicates=30, conflicts=0, parse_failures=0)
    by_hash = Counter(hash_of_input(spec, c.input) for c in replay.calls)
    digest, n_forgotten = by_hash.most_common(1)[0]
    text = next(c.input for c in replay.calls if hash_of_input(spec, c.input) == digest)
    assert n_forgotten >= 2

    # no checkpoint after the first (empty) one: after the SIGKILL below, the worker replays every call
    worker = start_worker("curator", namespace, kafka_settings, tmp_path, GRADUATE_WORKER_COMMIT_INTERVAL_S="3600")
    port = worker.port
    try:
        await wait_for(lambda: worker.get("/readyz") is not None, 90, "the curator ready", worker)
        await produce(kafka_settings, codec, topic_name(CALLS_CAPTURED, namespace), [(c.call_id, c) for c in replay.calls])
        await wait_for_dataset(kafka_settings, codec, namespace, {BANKING: 300}, worker)
        assert digest in await raw_hashes(kafka_settings, codec, namespace)

        env = worker_env(namespace, kafka_settings, tmp_path)
        out = run_cli(["dataset", "forget", "--task", BANKING, "--input", "  " + text.upper(), "--reason", "test"], env)
        assert digest in out
        hashes = await raw_hashes(kafka_settings, codec, namespace)
        assert digest not in hashes and len(hashes) == len(by_hash) - 1

        assert await state_records(kafka_settings, namespace) == 0  # so the restart below replays every call

        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait()
        worker = start_worker("curator", namespace, kafka_settings, tmp_path, port=port)

        def replayed_all():
            stats = worker.get("/curator/stats/")
            return stats if stats.get(BANKING, {}).get("calls") == 300 else None

        await wait_for(replayed_all, 120, "the restarted curator to read all 300 calls again", worker)
        await wait_for_dataset(kafka_settings, codec, namespace, {BANKING: 300 - n_forgotten}, worker)
        hashes = await raw_hashes(kafka_settings, codec, namespace)
        assert digest not in hashes and sum(1 for _ in hashes) == len(by_hash) - 1

        snap = json.loads(run_cli(["dataset", "snapshot", "--task", BANKING, "--json"], env))
        manifest, train, holdout = read_snapshot(Path(snap["path"]))
        rows = train.column("normalised_hash").to_pylist() + holdout.column("normalised_hash").to_pylist()
        assert digest not in rows and len(rows) == len(by_hash) - 1
        assert manifest["curation"]["calls"] == 300 - n_forgotten
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()


def test_forget_refuses_an_ambiguous_request(tmp_path):
    import subprocess

    from tests.integration.test_workers import GRADUATE

    done = subprocess.run([GRADUATE, "dataset", "forget", "--task", BANKING], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 2 and "exactly one of --input and --input-hash" in done.stderr
    done = subprocess.run([GRADUATE, "dataset", "forget", "--task", BANKING, "--input-hash", "XYZ"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 2 and "64 lowercase hex" in done.stderr


async def test_a_dataset_topic_with_too_few_partitions_stops_the_curator_at_start(namespace, kafka_settings,
                                                                                  tmp_path):
    from services.common import catalog
    from services.common.kafka import delete_topics, ensure_topics

    narrow = dataclasses.replace(catalog.DATASET, partitions=2)
    await ensure_topics(kafka_settings, namespace, (narrow,))
    worker = start_worker("curator", namespace, kafka_settings, tmp_path)
    try:
        rc = worker.proc.wait(timeout=120)
        dataset = topic_name(catalog.DATASET, namespace)
        assert rc != 0 and f"{dataset} has 2 partitions" in worker.tail(), worker.tail()
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()
        await delete_topics(kafka_settings, [topic_name(s, namespace) for s in catalog.CATALOG])
