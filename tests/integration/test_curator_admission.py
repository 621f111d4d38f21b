"""Hand-produced CapturedCalls on the captured topic (a trust boundary: services publish there
themselves) against the real curator worker: refused ones are dead-lettered with their reason and
counted per producer; what is admitted reaches the snapshot redacted, with labels from the set."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from services.common.catalog import CALLS_CAPTURED, DEADLETTER, topic_name
from services.common.contracts import CapturedCall, DeadLetter
from services.common.settings import REPO_ROOT
from services.curator.snapshot import read_snapshot
from tests.integration.test_curator_worker import run_cli, wait_for_dataset
from tests.integration.test_workers import BANKING, metric, start_worker, stop_worker, wait_for, worker_env
from tests.support import decode_all, produce, read_topic

pytestmark = pytest.mark.integration

CARD, EMAIL = "4111 1111 1111 1111", "jane.doe@example.com"


def tasks_file(folder: Path) -> Path:
    labels = json.loads((REPO_ROOT / "data" / "banking77" / "categories.json").read_text())
    path = folder / "tasks.yaml"
    path.write_text(yaml.safe_dump({"tasks": [
        {"name": BANKING, "kind": "classification", "labels": labels},
        {"name": "strict-intent", "kind": "classification", "labels": labels, "redaction": {"captured": "refuse"}},
    ]}))
    return path


def call(call_id: str, text: str, output: str | None = "card_arrival", **kw) -> CapturedCall:
    return CapturedCall(call_id=call_id, task=kw.pop("task", BANKING), input=text, output_raw=output or "??",
                        output=output, parse_ok=output is not None, latency_ms=1.0, **kw)


async def test_hand_produced_records_are_checked_before_the_dataset(topics, namespace, kafka_settings, codec,
                                                                    tmp_path: Path):
    good = [call(f"good{i:03d}", f"my card number {i} has not arrived yet") for i in range(40)]
    planted = {
        "outside": call("outside", "where is the card I ordered", output="free_money"),
        "pii": call("pii", f"my card {CARD} never came, write to {EMAIL}", redacted=False,
                    trace={"caller": "billing"}),
    }
    refused = {  # call_id -> the reason's code
        "": call("", "an empty call id", trace={"caller": "billing"}),
        "unknown": call("unknown", "a task nobody declared", task="no-such-task", trace={"caller": "billing"}),
        "strict": call("strict", f"card {CARD} for a task that refuses PII", task="strict-intent"),
    }
    records = [(c.call_id, c) for c in good + list(planted.values()) + list(refused.values())]
    await produce(kafka_settings, codec, topic_name(CALLS_CAPTURED, namespace), records)
    env = {"GRADUATE_TASKS_FILE": str(tasks_file(tmp_path))}

    worker = start_worker("curator", namespace, kafka_settings, tmp_path, **env)
    try:
        def admitted():
            stats = worker.get("/curator/stats/")
            return stats if stats.get(BANKING, {}).get("calls") == 42 else None

        stats = await wait_for(admitted, 240, "the curator to admit 42 calls", worker)
        assert set(stats) == {BANKING}  # the refused task's call and the unknown task counted nowhere
        assert stats[BANKING]["parse_failures"] == 1  # the label outside the set
        letters = decode_all(codec, await read_topic(kafka_settings, topic_name(DEADLETTER, namespace), min_count=3),
                             DeadLetter)
        by_key = {d.key.decode(): d.reason for d in letters}
        assert set(by_key) == set(refused), by_key
        assert "refused (call_id)" in by_key[""]
        assert "refused (unknown_task)" in by_key["unknown"] and "no-such-task" in by_key["unknown"]
        assert "refused (unredacted)" in by_key["strict"] and "CARD x1" in by_key["strict"]
        text = worker.get("/metrics")
        assert metric(text, "graduate_curator_refused_total", producer="billing", reason="call_id") == 1
        assert metric(text, "graduate_curator_refused_total", producer="billing", reason="unknown_task") == 1
        assert metric(text, "graduate_curator_refused_total", producer="unknown", reason="unredacted") == 1

        await wait_for_dataset(kafka_settings, codec, namespace, {BANKING: 42}, worker)
        out = json.loads(run_cli(["dataset", "snapshot", "--task", BANKING, "--json"],
                                 worker_env(namespace, kafka_settings, tmp_path, **env)))
        manifest, train, holdout = read_snapshot(Path(out["path"]))
        rows = {r["call_id"]: r for r in train.to_pylist() + holdout.to_pylist()}
        assert set(rows) == {c.call_id for c in good} | {"pii"}  # "outside" kept no label
        assert CARD not in rows["pii"]["input"] and EMAIL not in rows["pii"]["input"]
        assert "<CARD>" in rows["pii"]["input"] and "<EMAIL>" in rows["pii"]["input"]
        labels = set(json.loads((REPO_ROOT / "data" / "banking77" / "categories.json").read_text()))
        assert {r["label"] for r in rows.values()} <= labels
        assert manifest["curation"]["parse_failures"] == 1
        assert manifest["curation"]["calls"] == 42  # the dataset topic holds what the curator admitted, no more
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()
