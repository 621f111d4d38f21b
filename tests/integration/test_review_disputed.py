"""The train labels a model disputes, end to end on the real broker: captured train calls filed by a real
curator, a ModelRegistered whose metrics list two of them (`label_review`), the review page (real HTTP)
lists them, a review of one lands on the reviewed-labels topic with the item's call id and input hash,
the curator's own snapshot trains on the person's label, and `graduate dataset forget` takes the other
off the list."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common import catalog
from services.common.catalog import topic_name
from services.common.contracts import CapturedCall, ModelRegistered, PairedCounts, ReviewedLabel
from services.common.normalize import hash_of_input, split_of
from services.common.settings import REPO_ROOT
from services.common.tasks import load_tasks
from services.curator.forget import forget_input
from services.curator.logic import DEFAULT_HOLDOUT_FRACTION
from services.curator.snapshot import read_snapshot
from tests.integration.test_curator_worker import run_cli
from tests.integration.test_review import (ReviewServer, curated_reviewer, eventually, publish_records,
                                           review_settings, reviewer_key)  # noqa: F401 - reviewer_key: a fixture
from tests.integration.test_workers import worker_env
from tests.support import decode_all, read_topic

pytestmark = pytest.mark.integration

TASK = "banking77-intent"
CAPTURED = [  # (call id, text, the frontier's answer: the train label)
    ("t-wrong", "My card has still not arrived, it has been two weeks", "card_delivery_estimate"),
    ("t-doubt", "How long does delivery of a new card usually take?", "card_arrival"),
    ("t-plain", "Please tell me the euro exchange rate", "exchange_rate"),
]


def train_text(text: str) -> str:
    """`text`, or the first numbered variant of it, that the deterministic split keeps for training."""
    for n in range(1000):
        candidate = text if n == 0 else f"{text} (ref {n})"
        if split_of(TASK, candidate, DEFAULT_HOLDOUT_FRACTION) == "train":
            return candidate
    raise AssertionError("no train variant found")


def snapshot_train_rows(env: dict) -> dict[str, dict]:
    """The train rows of a fresh snapshot taken by `graduate dataset snapshot`, by input hash."""
    snap = json.loads(run_cli(["dataset", "snapshot", "--task", TASK, "--json"], env))
    _, train, _ = read_snapshot(Path(snap["path"]))
    return {r["normalised_hash"]: r for r in train.to_pylist()}


def registration(items: list[dict]) -> ModelRegistered:
    review = {"rows": len(CAPTURED), "disputed": len(items), "listed": len(items), "items": items}
    return ModelRegistered(task=TASK, version="1", base_model="minilm", snapshot_id="s-test", holdout_size=0,
                           gold_reviewed=0, gold_frontier=0, small_accuracy=0.9, frontier_accuracy=0.9, agreement=0.9,
                           paired=PairedCounts(), metrics_json=json.dumps({"label_review": review}),
                           artifact_uri="file:///nowhere", triton_model="banking77-intent")


async def test_a_disputed_train_label_reviewed_on_the_page_is_the_snapshots_train_label(
        topics, tmp_path: Path, kafka_settings, namespace, codec, reviewer_key):  # noqa: F811
    spec = load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(TASK)
    calls = [(cid, train_text(text), label) for cid, text, label in CAPTURED]
    digests = {cid: hash_of_input(spec, text) for cid, text, _ in calls}
    records = [(catalog.CALLS_CAPTURED, cid, CapturedCall(call_id=cid, task=TASK, input=text, output_raw=label,
                                                          output=label, latency_ms=300.0))
               for cid, text, label in calls]
    items = [{"call_id": cid, "normalised_hash": digests[cid], "input": text, "label": label,
              "frontier_label": label, "model_label": model, "label_probability": 0.03, "model_probability": 0.88}
             for (cid, text, label), model in zip(calls[:2], ("card_arrival", "card_delivery_estimate"))]
    settings = review_settings(tmp_path, kafka_settings, namespace)
    async with curated_reviewer(namespace, kafka_settings, codec, tmp_path, records, reviewer_key) as client:
        await publish_records(kafka_settings, codec, namespace, [(catalog.MODELS, f"{TASK}/1", registration(items))])
        with ReviewServer(settings) as page:
            async def disputed() -> dict:
                r = await client.get(f"{page.url}/api/tasks/{TASK}/disputed")
                r.raise_for_status()
                return r.json()

            listed = await disputed()
            assert (listed["model_version"], listed["listed"], listed["to_check"]) == ("1", 2, 2)
            assert [i["call_id"] for i in listed["items"]] == ["t-wrong", "t-doubt"]
            assert listed["items"][0]["input"] == calls[0][1] and listed["items"][0]["review"] is None
            assert (await client.get(f"{page.url}/api/tasks/{TASK}/summary")).json()["disputed_to_check"] == 2

            r = await client.post(f"{page.url}/api/tasks/{TASK}/reviews",
                                  json={"call_id": "t-wrong", "label": "card_arrival"})
            assert r.status_code == 200, r.text
            refused = await client.post(f"{page.url}/api/tasks/{TASK}/reviews",
                                        json={"call_id": "t-plain", "label": "card_arrival"})  # captured, not listed
            assert refused.status_code == 404, refused.text
            after = await disputed()
            assert after["to_check"] == 1 and after["items"][0]["review"]["label"] == "card_arrival"

            sent = decode_all(codec, await read_topic(kafka_settings, topic_name(catalog.LABELS_REVIEWED, namespace),
                                                      min_count=1), ReviewedLabel)
            assert [(r.call_id, r.label, r.normalised_hash) for r in sent] == \
                [("t-wrong", "card_arrival", digests["t-wrong"])]

            # the curator's own snapshot: the train row carries the person's label
            rows = snapshot_train_rows(worker_env(namespace, kafka_settings, tmp_path))
            wrong = rows[digests["t-wrong"]]
            assert (wrong["label"], wrong["frontier_label"], wrong["reviewed"]) == \
                ("card_arrival", "card_delivery_estimate", True)
            assert not rows[digests["t-doubt"]]["reviewed"]

            await forget_input(settings.common, codec, TASK, digests["t-doubt"], requested_by="test")

            async def forgotten() -> bool:
                d = await disputed()
                return [i["call_id"] for i in d["items"]] == ["t-wrong"] and d["to_check"] == 0
            assert await eventually(forgotten, timeout=30), await disputed()
