"""The controller worker starts a graduation by itself (`graduation: auto`) on the real Kafka.

A task of this test's own tasks file; captured calls and reviews in its own namespace; the
profiler's thresholds set low as an operator would for a small task. The worker must first note
that reviews are missing (with how many), then — once they are published — ask the trainer for the
first model (kind first) exactly once, and note it on the routing history; `graduate status` says so.
When the trainer refuses that request, the task leaves `training` and the history gives the reason.
"""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from services.common import catalog
from services.common.catalog import topic_name
from services.common.contracts import CapturedCall, RetrainRequest, ReviewedLabel, RoutingDecision, utcnow
from services.common.normalize import split_of
from tests.integration.test_controller import ControllerWorker, env, graduate  # noqa: F401 - env is a fixture
from services.common.kafka import dead_letter
from tests.integration.test_curator_worker import wait_for_dataset
from tests.integration.test_workers import start_worker, stop_worker
from tests.support import decode_all, produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASK = "tickets"
TASKS_YAML = """
tasks:
  - name: tickets
    kind: classification
    labels: [billing, outage]
    graduation: auto
    system_prompt: "Answer billing or outage."
"""
LOW_BARS = {"GRADUATE_PROFILER_MIN_CALLS_PER_DAY": "1", "GRADUATE_PROFILER_MIN_USABLE_EXAMPLES": "10",
            "GRADUATE_PROFILER_MIN_REPEATED_INPUTS": "0", "GRADUATE_PROFILER_MIN_REPEAT_SHARE": "0",
            "GRADUATE_PROFILER_MIN_STABILITY": "0", "GRADUATE_PROFILER_MIN_P95_LATENCY_MS": "0",
            "GRADUATE_PROFILER_MIN_COST_PER_DAY_USD": "0", "GRADUATE_PROFILER_INSTANCE_PRICE_PER_HOUR": "0",
            "GRADUATE_PROFILER_TRAINING_RUN_USD": "0", "GRADUATE_PROFILER_OPS_ALLOWANCE_PER_MONTH_USD": "0"}


def calls(n: int) -> list[CapturedCall]:
    start = utcnow() - timedelta(hours=2)
    return [CapturedCall(call_id=f"c{i}", task=TASK, input=f"ticket {i}: my {'invoice' if i % 2 else 'service'} "
                         f"is {'wrong' if i % 2 else 'down'}", output_raw=label, output=label, latency_ms=800.0,
                         cost_usd=0.002, ts=start + timedelta(seconds=10 * i))
            for i in range(n) for label in ["billing" if i % 2 else "outage"]]


async def test_auto_asks_for_the_first_model_once_the_reviews_are_in(tmp_path, env, topics, namespace,
                                                                     kafka_settings, codec):
    (tmp_path / "tasks.yaml").write_text(TASKS_YAML)
    env = {**env, **LOW_BARS, "GRADUATE_TASKS_FILE": str(tmp_path / "tasks.yaml"),
           "GRADUATE_CONTROLLER_LOOK_INTERVAL_S": "2", "GRADUATE_CONTROLLER_MIN_HOLDOUT": "10",
           "GRADUATE_CURATOR_HOLDOUT_FRACTION": "0.5"}
    captured = calls(80)
    await produce(kafka_settings, codec, topic_name(catalog.CALLS_CAPTURED, namespace), [(c.call_id, c) for c in captured])
    curator = start_worker("curator", namespace, kafka_settings, tmp_path,  # it keeps the dataset topic
                           GRADUATE_TASKS_FILE=env["GRADUATE_TASKS_FILE"])
    try:
        await wait_for_dataset(kafka_settings, codec, namespace, {TASK: 80}, curator)
    finally:
        assert stop_worker(curator) == 0, curator.tail()
    worker = ControllerWorker(env, tmp_path).start()
    try:
        history = topic_name(catalog.ROUTING_HISTORY, namespace)
        (note,) = decode_all(codec, await read_topic(kafka_settings, history, min_count=1, timeout=120), RoutingDecision)
        evidence = json.loads(note.evidence)
        assert evidence["state"] == "collecting_reviews", (note.reason, worker.tail())
        assert evidence["reviews_needed"] == 10 and "(10 more)" in note.reason

        holdout = [c for c in captured if split_of(TASK, c.input, 0.5) == "holdout"][:12]
        reviews = [ReviewedLabel(call_id=c.call_id, task=TASK, label=c.output, reviewer="ana") for c in holdout]
        await produce(kafka_settings, codec, topic_name(catalog.LABELS_REVIEWED, namespace),
                      [(r.call_id, r) for r in reviews])
        requests = topic_name(catalog.RETRAIN_REQUESTS, namespace)
        (request,) = decode_all(codec, await read_topic(kafka_settings, requests, min_count=1, timeout=120),
                                RetrainRequest)
        assert (request.task, request.kind, request.requested_by) == (TASK, "first", "controller")
        notes = decode_all(codec, await read_topic(kafka_settings, history, min_count=2, timeout=60), RoutingDecision)
        assert notes[-1].reason.startswith("graduation training: recommended by the profiler and 12 reviewed")
        status = graduate(env, "status", "--json")
        row = {r["task"]: r for r in json.loads(status.stdout)}[TASK]
        assert row["graduation"] == "training" and row["mode"] == "frontier"
        assert len(decode_all(codec, await read_topic(kafka_settings, requests, min_count=1), RetrainRequest)) == 1

        # the trainer refuses it (as trainer/service.py dead-letters it): the task leaves `training`, saying why
        letter = dead_letter(requests, 0, 0, "trainer", ValueError("snapshot s of tickets is not trained on: 2 "
                                                                   "holdout labels without a training example"),
                             TASK.encode(), codec.encode(request))
        await produce(kafka_settings, codec, topic_name(catalog.DEADLETTER, namespace), [(TASK, letter)])
        notes = decode_all(codec, await read_topic(kafka_settings, history, min_count=3, timeout=60), RoutingDecision)
        assert notes[-1].reason.startswith("graduation ready: the trainer refused the first request: snapshot s"), \
            worker.tail()
    finally:
        worker.stop()
