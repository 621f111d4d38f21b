"""The review page as a real HTTP server against the real Kafka and a real curator: it replays the
topics at start, follows them live, draws its queue from the dataset topic that the curator writes
from the captured calls, and its reviews land on the compacted reviewed-labels topic keyed by
call_id, naming their input (a second review of a call replaces the first, also across a restart
of the page).

Each test gets its own topic namespace; the page runs in-process under uvicorn on a free port
(its own thread and event loop), the curator as `graduate worker curator`. The seed helpers are
shared with the browser test.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from services.common import catalog
from services.common.catalog import topic_name
from services.common.contracts import (CapturedCall, Contract, Disagreement, ReviewedLabel, RoutingDecision,
                                       ShadowResult, ShadowStats)
from services.common.normalize import hash_of_input, split_of
from services.common.settings import REPO_ROOT, CommonSettings, KafkaSettings
from services.common.tasks import load_tasks
from services.curator.forget import forget_input
from services.curator.logic import DEFAULT_HOLDOUT_FRACTION
from services.review.app import create_app
from services.review.settings import ReviewSettings
from services.router.keys import create_key
from tests.integration.test_curator_worker import wait_for_dataset
from tests.integration.test_workers import start_worker, stop_worker, wait_for
from tests.support import decode_all, produce, read_topic

pytestmark = pytest.mark.integration

TASK = "banking77-intent"
SCRIPT_TEXT = "<script>alert('xss')</script><b>bold?</b> my card was stolen"
SEED = [  # (call id, text, frontier label, small label or None, confidence)
    ("d1", "My card still has not arrived after two weeks", "card_arrival", "card_delivery_estimate", 0.31),
    ("d2", "How long until a new card gets delivered to me?", "card_arrival", "card_delivery_estimate", 0.52),
    ("l1", "The top-up did not go through this morning", "top_up_failed", "top_up_failed", 0.41),
    ("x1", SCRIPT_TEXT, "lost_or_stolen_card", "lost_or_stolen_card", 0.58),
    ("s1", "What is the exchange rate for euros today", "exchange_rate", "exchange_rate", 0.97),
    ("s2", "I want to change my PIN", "change_pin", None, None),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 60.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/readyz did not answer 200 within {timeout} s")


def holdout_text(text: str, fraction: float = DEFAULT_HOLDOUT_FRACTION) -> str:
    """`text`, or the first numbered variant of it, that the deterministic split holds out."""
    for n in range(10_000):
        candidate = text if n == 0 else f"{text} (ref {n})"
        if split_of(TASK, candidate, fraction) == "holdout":
            return candidate
    raise AssertionError("no holdout variant found")


def seed_records(prefix: str) -> tuple[list[tuple[catalog.TopicSpec, str, Contract]], dict[str, str]]:
    """Captured holdout calls, two disagreements, shadow results, a decision and stats; call ids
    are `prefix + id`. Returns the records and the text of each call id."""
    records: list[tuple[catalog.TopicSpec, str, Contract]] = []
    texts = {}
    for cid, text, frontier, small, confidence in SEED:
        call_id, text = prefix + cid, holdout_text(text)
        texts[call_id] = text
        records.append((catalog.CALLS_CAPTURED, call_id, CapturedCall(
            call_id=call_id, task=TASK, input=text, output_raw=frontier, output=frontier, latency_ms=400.0)))
        if small is None:
            continue
        records.append((catalog.SHADOW_RESULTS, call_id, ShadowResult(
            call_id=call_id, task=TASK, model_version="1", output=small, confidence=confidence, latency_ms=4.0,
            input=text, frontier_output=frontier)))
        if small != frontier:
            records.append((catalog.DISAGREEMENTS, call_id, Disagreement(
                call_id=call_id, task=TASK, model_version="1", input=text, frontier_output=frontier,
                small_output=small, confidence=confidence)))
    shadow = RoutingDecision(task=TASK, mode="shadow", model_version="1", threshold=0.62, reason="offline gate passed",
                             decided_by="controller")
    records += [(catalog.ROUTING_DECISIONS, TASK, shadow), (catalog.ROUTING_HISTORY, TASK, shadow),
                (catalog.SHADOW_STATS, f"{TASK}/1", ShadowStats(task=TASK, model_version="1", compared=4, agreed=2))]
    return records, texts


async def publish_records(kafka: KafkaSettings, codec, namespace: str, records) -> None:
    by_topic: dict[str, list] = {}
    for spec, key, value in records:
        by_topic.setdefault(topic_name(spec, namespace), []).append((key, value))
    for topic, items in by_topic.items():
        await produce(kafka, codec, topic, items)


@asynccontextmanager
async def running_curator(namespace: str, kafka: KafkaSettings, tmp_path: Path):
    """`graduate worker curator` on this test's topics, ready; stopped (and checked) afterwards."""
    worker = start_worker("curator", namespace, kafka, tmp_path)
    try:
        await wait_for(lambda: worker.get("/readyz") is not None, 90, "the curator ready", worker)
        yield worker
    except BaseException:
        stop_worker(worker)
        raise
    rc = stop_worker(worker)
    assert rc == 0, worker.tail()


async def curated(kafka: KafkaSettings, codec, namespace: str, records, worker) -> None:
    """Until the curator has filed every captured call of `records` in the dataset topic."""
    calls = Counter(v.task for spec, _, v in records if spec.name == catalog.CALLS_CAPTURED.name)
    await wait_for_dataset(kafka, codec, namespace, dict(calls), worker)


@asynccontextmanager
async def curated_reviewer(namespace: str, kafka: KafkaSettings, codec, tmp_path: Path, records, reviewer_key: str):
    """A running curator that has filed `records`, and an HTTP client sending the reviewer's key."""
    async with running_curator(namespace, kafka, tmp_path) as curator, \
            httpx.AsyncClient(headers={"Authorization": f"Bearer {reviewer_key}"}, timeout=10) as client:
        await publish_records(kafka, codec, namespace, records)
        await curated(kafka, codec, namespace, records, curator)
        yield client


def review_settings(tmp_path: Path, kafka: KafkaSettings, namespace: str, port: int | None = None) -> ReviewSettings:
    return ReviewSettings(port=port or free_port(), api_keys_file=tmp_path / "keys.json", retry_s=0.5,
                          common=CommonSettings(kafka=kafka, topic_namespace=namespace, var_dir=tmp_path))


class ReviewServer:
    """The review app under uvicorn in a thread of its own (its own event loop), on a free port."""

    def __init__(self, settings: ReviewSettings) -> None:
        self.url = f"http://127.0.0.1:{settings.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port,
                                                    log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, name=f"review-{settings.port}", daemon=True)

    def __enter__(self) -> "ReviewServer":
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the review page did not stop"


@pytest.fixture
def reviewer_key(tmp_path) -> str:
    return create_key(tmp_path / "keys.json", "ana", role="reviewer")


async def queue_ids(client: httpx.AsyncClient, url: str) -> list[str]:
    r = await client.get(f"{url}/api/tasks/{TASK}/queue")
    r.raise_for_status()
    return [i["call_id"] for i in r.json()["items"]]


async def eventually(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_reviews_land_on_the_compacted_topic_and_the_latest_one_wins_across_restarts(
        topics, tmp_path, kafka_settings, namespace, codec, reviewer_key):
    records, texts = seed_records("r-")
    settings = review_settings(tmp_path, kafka_settings, namespace)
    async with curated_reviewer(namespace, kafka_settings, codec, tmp_path, records, reviewer_key) as client:
        with ReviewServer(settings) as page:
            ids = await queue_ids(client, page.url)
            assert ids[:4] == ["r-d1", "r-d2", "r-l1", "r-x1"] and set(ids[4:]) == {"r-s1", "r-s2"}
            item = (await client.get(f"{page.url}/api/tasks/{TASK}/items/r-x1")).json()
            assert item["input"] == texts["r-x1"]  # stored and served as the raw text; the HTML escapes it
            summary = (await client.get(f"{page.url}/api/tasks/{TASK}/summary")).json()
            assert (summary["mode"], summary["model_version"], summary["threshold"]) == ("shadow", "1", 0.62)

            for label in ("card_arrival", "card_delivery_estimate"):
                r = await client.post(f"{page.url}/api/tasks/{TASK}/reviews",
                                      json={"call_id": "r-d1", "label": label, "note": f"<i>{label}</i>"})
                assert r.status_code == 200, r.text
            assert "r-d1" not in await queue_ids(client, page.url)

            # live: a new disagreement jumps the queue; another writer's review is applied
            late_text = holdout_text("Card arrival is late again")
            await publish_records(kafka_settings, codec, namespace, [
                (catalog.CALLS_CAPTURED, "r-new", CapturedCall(call_id="r-new", task=TASK, input=late_text,
                                                               output_raw="card_arrival", output="card_arrival",
                                                               latency_ms=300.0)),
                (catalog.DISAGREEMENTS, "r-new", Disagreement(call_id="r-new", task=TASK, model_version="1",
                                                              input=late_text, frontier_output="card_arrival",
                                                              small_output="card_delivery_estimate", confidence=0.2)),
                (catalog.LABELS_REVIEWED, "r-s2", ReviewedLabel(call_id="r-s2", task=TASK, label="change_pin",
                                                                reviewer="bo"))])

            async def live():
                ids = await queue_ids(client, page.url)
                return ids[:1] == ["r-new"] and "r-s2" not in ids
            assert await eventually(live, timeout=60), await queue_ids(client, page.url)

        records = await read_topic(kafka_settings, topic_name(catalog.LABELS_REVIEWED, namespace), min_count=3)
        reviews = decode_all(codec, records, ReviewedLabel)
        mine = [(rec.key, r.label, r.reviewer, r.note, r.normalised_hash)
                for rec, r in zip(records, reviews, strict=True) if r.call_id == "r-d1"]
        digest = hash_of_input(load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(TASK), texts["r-d1"])
        assert mine == [(b"r-d1", "card_arrival", "ana", "<i>card_arrival</i>", digest),
                        (b"r-d1", "card_delivery_estimate", "ana", "<i>card_delivery_estimate</i>", digest)]
        assert len({rec.partition for rec, r in zip(records, reviews, strict=True) if r.call_id == "r-d1"}) == 1

        # a fresh page replays the topic: the latest review is the one it shows, the item stays out
        with ReviewServer(review_settings(tmp_path, kafka_settings, namespace)) as again:
            ids = await queue_ids(client, again.url)
            assert ids[0] == "r-new" and "r-d1" not in ids and "r-s2" not in ids
            item = (await client.get(f"{again.url}/api/tasks/{TASK}/items/r-d1")).json()
            assert item["review"]["label"] == "card_delivery_estimate"
            reviewed = (await client.get(f"{again.url}/api/tasks/{TASK}/summary")).json()["reviewed"]
            assert reviewed["total"] == 2  # r-d1 once, r-s2

            # `graduate dataset forget`: the input leaves the page that follows the dataset topic
            spec = load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(TASK)
            await forget_input(settings.common, codec, TASK, hash_of_input(spec, texts["r-x1"]), requested_by="test")

            async def forgotten():
                return "r-x1" not in await queue_ids(client, again.url)
            assert await eventually(forgotten, timeout=30), await queue_ids(client, again.url)
            assert (await client.get(f"{again.url}/api/tasks/{TASK}/items/r-x1")).status_code == 404


async def test_a_page_started_before_its_topics_exist_finds_them(tmp_path, kafka_settings, namespace, codec,
                                                                reviewer_key):
    from services.common.kafka import delete_topics, ensure_topics

    settings = review_settings(tmp_path, kafka_settings, namespace)
    try:
        with ReviewServer(settings) as page:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {reviewer_key}"}, timeout=10) as client:
                status = (await client.get(f"{page.url}/readyz")).json()
                assert topic_name(catalog.LABELS_REVIEWED, namespace) in status["missing_topics"]
                await ensure_topics(kafka_settings, namespace)
                async with running_curator(namespace, kafka_settings, tmp_path):
                    records, _ = seed_records("m-")
                    await publish_records(kafka_settings, codec, namespace, records)

                    async def found():
                        return "m-d1" in await queue_ids(client, page.url)
                    assert await eventually(found, timeout=60)
    finally:
        await delete_topics(kafka_settings, [topic_name(s, namespace) for s in catalog.CATALOG])


async def test_an_extraction_review_corrects_fields_and_lands_as_the_canonical_json(
        topics, tmp_path, kafka_settings, namespace, codec, reviewer_key):
    import json

    booking = "restaurant8k-booking"  # config/tasks.yaml: people, time, date, first_name, last_name
    text = next(t for t in (f"a table for 2 at 7 pm please (ref {n})" for n in range(10_000))
                if split_of(booking, t, DEFAULT_HOLDOUT_FRACTION) == "holdout")
    answer = lambda **v: json.dumps({f: v.get(f) for f in ("date", "first_name", "last_name", "people", "time")},  # noqa: E731
                                    sort_keys=True)
    frontier, small = answer(people="2", time="7 pm"), answer(people="2", time="8 pm")
    await publish_records(kafka_settings, codec, namespace, [
        (catalog.CALLS_CAPTURED, "e-1", CapturedCall(call_id="e-1", task=booking, input=text, output_raw=frontier,
                                                     output=frontier, latency_ms=500.0)),
        (catalog.DISAGREEMENTS, "e-1", Disagreement(call_id="e-1", task=booking, model_version="1", input=text,
                                                    frontier_output=frontier, small_output=small, confidence=0.3,
                                                    differing_fields=["time"]))])
    headers = {"Authorization": f"Bearer {reviewer_key}"}
    async with running_curator(namespace, kafka_settings, tmp_path), \
            httpx.AsyncClient(headers=headers, timeout=10) as client:
        with ReviewServer(review_settings(tmp_path, kafka_settings, namespace)) as page:
            async def queued():  # once the curator has filed the call in the dataset topic
                r = await client.get(f"{page.url}/api/tasks/{booking}/queue")
                return [i for i in r.json()["items"] if i["call_id"] == "e-1"]
            (item,) = await eventually(queued, timeout=60)
            assert item["differing_fields"] == ["time"] and item["frontier_label"] == frontier
            bad = await client.post(f"{page.url}/api/tasks/{booking}/reviews",
                                    json={"call_id": "e-1", "fields": {"time": "7 pm", "party": "2"}})
            assert bad.status_code == 422 and "not a field of task restaurant8k-booking: 'party'" in bad.json()["error"]
            ok = await client.post(f"{page.url}/api/tasks/{booking}/reviews",
                                   json={"call_id": "e-1", "fields": {"people": "2", "time": " 7:15  pm"}})
            assert ok.status_code == 200, ok.text
        records = await read_topic(kafka_settings, topic_name(catalog.LABELS_REVIEWED, namespace), min_count=1)
        (review,) = decode_all(codec, records, ReviewedLabel)
        assert (records[0].key, review.task, review.verdict) == (b"e-1", booking, "label")
        assert review.label == answer(people="2", time="7:15 pm")
        spec = load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(booking)
        assert review.normalised_hash == hash_of_input(spec, text)
