"""The review page in headless Chromium: a person signs in, labels three items with the keyboard
and the mouse, and the ReviewedLabel records are read back from the real Kafka topic; an input
holding HTML and a script is shown as text. Screenshots: <var>/screenshots/review-queue.png and
review-task.png.

The page runs as `graduate review serve` (a process of its own), after a curator (`graduate worker
curator`) has filed the seeded calls in the dataset topic the queue is drawn from; the browser is driven by
playwright-core (npm, package.json at the repository root) against the system's Chromium —
`make test` installs both. Where either is missing the test skips and says what to install.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import catalog
from services.common.catalog import topic_name
from services.common.contracts import ReviewedLabel
from services.common.settings import REPO_ROOT, CommonSettings
from services.router.keys import create_key
from tests.integration.test_review import (SCRIPT_TEXT, TASK, curated, free_port, publish_records,
                                           running_curator, seed_records, wait_ready)
from tests.support import decode_all, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

DRIVER = Path(__file__).with_suffix(".mjs")


def chromium_path() -> str | None:
    explicit = os.environ.get("GRADUATE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser() -> tuple[str, str]:
    """(Chromium, node), or a skip that says what to install."""
    chromium, node = chromium_path(), shutil.which("node")
    if chromium is None:
        pytest.skip("no Chromium: install Debian's package (apt-get install -y chromium) or set GRADUATE_CHROMIUM")
    if node is None:
        pytest.skip("no Node.js: the browser test drives Chromium with playwright-core")
    if not (REPO_ROOT / "node_modules" / "playwright-core" / "package.json").exists():
        pytest.skip("playwright-core is not installed: run `npm ci --no-audit --no-fund` at the repository root")
    return chromium, node


@pytest.fixture
def start_review_page(topics, tmp_path, kafka_settings, namespace):
    """Starts `graduate review serve` on this test's topics and waits until it has replayed them;
    returns (url, reviewer key). Stopped afterwards."""
    procs: list[subprocess.Popen] = []

    def start() -> tuple[str, str]:
        key = create_key(tmp_path / "keys.json", "ana", role="reviewer")
        port = free_port()
        env = {**os.environ, "GRADUATE_TOPIC_NAMESPACE": namespace,
               "GRADUATE_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
               "GRADUATE_REVIEW_API_KEYS_FILE": str(tmp_path / "keys.json"), "GRADUATE_VAR_DIR": str(tmp_path)}
        exe = Path(sys.executable).with_name("graduate")
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "services.cli"]
        with open(tmp_path / "review.log", "w") as log:
            procs.append(subprocess.Popen([*command, "review", "serve", "--port", str(port), "--log-level", "warning"],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc=procs[-1])
        return url, key

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)



def screenshot_dir() -> Path:
    return CommonSettings().var_dir / "screenshots"


def drive(node: str, driver: str, url: str, key: str, task: str, chromium: str, tmp_path: Path, **env: str) -> dict:
    """Run one browser driver (tests/e2e/*.mjs) against the page; what it saw (its last JSON line).
    Screenshots go to screenshot_dir()."""
    screenshots = screenshot_dir()
    screenshots.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([node, str(DRIVER.with_name(driver))], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "REVIEW_URL": url, "REVIEW_KEY": key, "REVIEW_TASK": task,
                                           "CHROMIUM": chromium, "SCREENSHOT_DIR": str(screenshots), **env})
    assert run.returncode == 0, f"browser driver failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n" \
                                f"{(tmp_path / 'review.log').read_text()[-3000:]}"
    return json.loads(run.stdout.strip().splitlines()[-1])

async def test_a_person_reviews_three_items_in_chromium(browser, start_review_page, kafka_settings, namespace, codec,
                                                        tmp_path):
    chromium, node = browser
    records, texts = seed_records("b-")
    async with running_curator(namespace, kafka_settings, tmp_path) as curator:
        await publish_records(kafka_settings, codec, namespace, records)
        await curated(kafka_settings, codec, namespace, records, curator)
    url, key = start_review_page()  # after the curator filed the seed: it is ready once it has read them
    seen = drive(node, DRIVER.name, url, key, TASK, chromium, tmp_path)

    assert [(s["call_id"], s["label"]) for s in seen["steps"]] == [
        ("b-d1", "card_arrival"), ("b-d2", "card_delivery_estimate"), ("b-l1", "top_up_failed")]
    assert seen["steps"][2]["shown"] == ["top_up_failed"]  # the search narrowed 77 labels to one

    reviewed = await read_topic(kafka_settings, topic_name(catalog.LABELS_REVIEWED, namespace), min_count=3)
    labels = decode_all(codec, reviewed, ReviewedLabel)
    got = sorted((r.key.decode(), v.call_id, v.verdict, v.label, v.reviewer)
                 for r, v in zip(reviewed, labels, strict=True))
    assert got == [
        ("b-d1", "b-d1", "label", "card_arrival", "ana"), ("b-d2", "b-d2", "label", "card_delivery_estimate", "ana"),
        ("b-l1", "b-l1", "label", "top_up_failed", "ana")]

    assert seen["next_call_id"] == "b-x1" and seen["input_text"] == texts["b-x1"] and SCRIPT_TEXT in seen["input_text"]
    assert seen["input_child_elements"] == 0 and seen["dialogs"] == []
    assert seen["script_elements"] == ["/static/review.js"]
    assert seen["errors"] == [] and seen["foreign_requests"] == []
    assert "b-l1" in seen["flash"] and "top_up_failed" in seen["flash"]
    assert (seen["task_mode"], seen["task_reviewed"]) == ("shadow", "3")
    for name in ("review-queue.png", "review-task.png"):
        assert (screenshot_dir() / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_person_corrects_one_field_of_an_extraction_item_in_chromium(browser, start_review_page,
                                                                            kafka_settings, namespace, codec,
                                                                            tmp_path):
    from services.common.contracts import CapturedCall, Disagreement
    from services.common.normalize import split_of
    from services.curator.logic import DEFAULT_HOLDOUT_FRACTION

    chromium, node = browser
    booking = "restaurant8k-booking"
    text = next(t for t in (f"a table for 2 at 7 pm on friday (ref {n})" for n in range(10_000))
                if split_of(booking, t, DEFAULT_HOLDOUT_FRACTION) == "holdout")
    def answer(**v):
        return json.dumps({f: v.get(f) for f in ("date", "first_name", "last_name", "people", "time")}, sort_keys=True)
    frontier, small = answer(people="2", time="7 pm"), answer(people="2", time="8 pm", date="friday")
    records = [
        (catalog.CALLS_CAPTURED, "f-1", CapturedCall(call_id="f-1", task=booking, input=text, output_raw=frontier,
                                                     output=frontier, latency_ms=500.0)),
        (catalog.DISAGREEMENTS, "f-1", Disagreement(call_id="f-1", task=booking, model_version="1", input=text,
                                                    frontier_output=frontier, small_output=small, confidence=0.3,
                                                    differing_fields=["date", "time"]))]
    async with running_curator(namespace, kafka_settings, tmp_path) as curator:
        await publish_records(kafka_settings, codec, namespace, records)
        await curated(kafka_settings, codec, namespace, records, curator)
    url, key = start_review_page()
    seen = drive(node, "test_review_browser_fields.mjs", url, key, booking, chromium, tmp_path, FIX_FIELD="time",
                 FIX_VALUE="7:15 pm")
    assert seen["call_id"] == "f-1" and seen["differs"] == ["time", "date"]  # the task spec's field order
    assert seen["prefilled"] == {"people": "2", "time": "7 pm", "date": "", "first_name": "", "last_name": ""}
    assert seen["after_2"] == {"people": "2", "time": "8 pm", "date": "friday", "first_name": "", "last_name": ""}
    assert seen["errors"] == [] and seen["dialogs"] == [] and "f-1" in seen["flash"]

    records = await read_topic(kafka_settings, topic_name(catalog.LABELS_REVIEWED, namespace), min_count=1)
    (review,) = decode_all(codec, records, ReviewedLabel)
    assert (records[0].key, review.verdict, review.reviewer) == (b"f-1", "label", "ana")
    assert review.label == answer(people="2", time="7:15 pm", date="friday")
    assert (screenshot_dir() / "review-fields.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_person_checks_a_disputed_train_label_in_chromium(browser, start_review_page, kafka_settings,
                                                                  namespace, codec, tmp_path):
    from tests.integration.test_review_disputed import CAPTURED, registration, train_text
    from services.common.contracts import CapturedCall
    from services.common.normalize import hash_of_input
    from services.common.settings import REPO_ROOT as ROOT
    from services.common.tasks import load_tasks

    chromium, node = browser
    spec = load_tasks(ROOT / "config" / "tasks.yaml").get(TASK)
    calls = [(cid, train_text(text), label) for cid, text, label in CAPTURED[:2]]
    items = [{"call_id": cid, "normalised_hash": hash_of_input(spec, text), "input": text, "label": label,
              "frontier_label": label, "model_label": model, "label_probability": 0.03, "model_probability": 0.88}
             for (cid, text, label), model in zip(calls, ("card_arrival", "card_delivery_estimate"))]
    records = [(catalog.CALLS_CAPTURED, cid, CapturedCall(call_id=cid, task=TASK, input=text, output_raw=label,
                                                          output=label, latency_ms=300.0))
               for cid, text, label in calls]
    async with running_curator(namespace, kafka_settings, tmp_path) as curator:
        await publish_records(kafka_settings, codec, namespace, records)
        await curated(kafka_settings, codec, namespace, records, curator)
    await publish_records(kafka_settings, codec, namespace, [(catalog.MODELS, f"{TASK}/1", registration(items))])
    url, key = start_review_page()
    seen = drive(node, "test_review_browser_disputed.mjs", url, key, TASK, chromium, tmp_path)
    assert seen["task_link"] == "2 train labels the model v1 disputes — check them"
    assert (seen["path"], seen["call_id"], seen["trained_on"]) == (f"/tasks/{TASK}/disputed", "t-wrong",
                                                                   "card_delivery_estimate")
    assert seen["model"] == "card_arrival probability 0.88" and seen["chosen"] == "card_arrival"
    assert "t-wrong" in seen["flash"] and seen["next_call_id"] == "t-doubt"
    assert seen["errors"] == [] and seen["dialogs"] == []

    records = await read_topic(kafka_settings, topic_name(catalog.LABELS_REVIEWED, namespace), min_count=1)
    (review,) = decode_all(codec, records, ReviewedLabel)
    assert (records[0].key, review.label, review.normalised_hash) == (b"t-wrong", "card_arrival",
                                                                      items[0]["normalised_hash"])
    assert (screenshot_dir() / "review-disputed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
