"""A real fine-tune on a small Banking77 subset, served by the real Triton, registered on Kafka.

8 labels, 40 train examples each, 2 epochs, 32 tokens: about a minute on two busy cores. The
model goes into the shared model repository under a uuid-suffixed name and is unloaded and
deleted afterwards; ModelRegistered goes to this test's own namespaced models topic.
"""
import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from rich.console import Console

from services.common.contracts import ModelRegistered
from services.common.settings import REPO_ROOT
from tests.support import decode_all, read_topic
from trainer import triton_repo
from trainer.calibrate import softmax
from trainer.dataset_from_banking77 import build_banking77_snapshot
from trainer.pipeline import train_task
from trainer.publish import publish_model_registered
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration

TASK = "banking77-intent"
N_LABELS = 8
UNLOAD_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def triton_url() -> str:
    url = os.environ.get("GRADUATE_TRITON_HTTP_URL", "127.0.0.1:8000")
    client = httpclient.InferenceServerClient(url=url)
    try:
        ready = client.is_server_ready()
    except Exception as error:  # noqa: BLE001 - any connection failure means the same here
        pytest.fail(f"no Triton at {url} ({error}); run deploy/local/triton/triton.sh start")
    finally:
        client.close()
    if not ready:
        pytest.fail(f"Triton at {url} is not ready")
    return url


@pytest.fixture(scope="module")
def model_repository() -> Path:
    return Path(os.environ.get("GRADUATE_MODEL_REPOSITORY", REPO_ROOT / "var" / "model-repository"))


@pytest.fixture
def model_name(triton_url: str, model_repository: Path) -> Iterator[str]:
    name = f"{TASK}-it-{uuid.uuid4().hex[:10]}"
    yield name
    client = httpclient.InferenceServerClient(url=triton_url)
    try:
        client.unload_model(name)
        deadline = time.monotonic() + UNLOAD_TIMEOUT_S
        while client.is_model_ready(name) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        client.close()
        shutil.rmtree(model_repository / name, ignore_errors=True)


async def test_fine_tune_serves_in_triton_like_torch_and_registers(
        tmp_path: Path, topics, namespace, kafka_settings, codec, triton_url, model_repository, model_name) -> None:
    build_banking77_snapshot(tmp_path / "datasets", TASK, REPO_ROOT / "data" / "banking77",
                             labels_subset=N_LABELS, per_label_train=40, per_label_holdout=40, reviewed_share=0.3)
    settings = TrainerSettings(var_dir=tmp_path, model_repository=model_repository, triton_http_url=triton_url,
                               kafka=kafka_settings, topic_namespace=namespace, triton_model=model_name,
                               epochs=2, max_length=32, batch_size=16, learning_rate=3e-4, validation_fraction=0.15,
                               quantize=False, device="cpu", threads=1, verify_examples=64)

    run = await asyncio.to_thread(train_task, settings, TASK, "latest", Console(stderr=True, width=120))
    await publish_model_registered(settings, run.event, codec)

    # it learned: chance is 1/8
    holdout = run.report["holdout"]
    assert holdout["n"] >= 300 and holdout["gold_reviewed"] > 50
    assert holdout["small_accuracy"] > 0.6, holdout
    assert run.report["parity"]["ok"] and run.report["parity"]["argmax_agreement"] == 1.0
    assert run.version_dir == model_repository / model_name / str(run.version)
    assert {p.name for p in run.version_dir.iterdir()} >= set(triton_repo.VERSION_FILES)

    # Triton answers every holdout text like the torch model (calibrated probabilities)
    from transformers import AutoTokenizer

    from trainer.finetune import is_pooled, load_pooled, predict_logits

    texts = (await asyncio.to_thread(_holdout_texts, tmp_path))
    hf = run.run_dir / "hf"
    assert is_pooled(hf)  # the mean-pooled classifier with its prototype-initialised head
    torch_logits = predict_logits(load_pooled(hf), AutoTokenizer.from_pretrained(hf), texts, settings.max_length, "cpu")
    torch_probs = softmax(torch_logits, run.report["temperature"])
    labels, confidences, probs = triton_repo.classify(triton_url, model_name, run.version, texts)
    labels_torch = [run.report["labels"][i] for i in torch_probs.argmax(1)]
    assert np.mean([a == b for a, b in zip(labels, labels_torch)]) >= 0.995
    assert np.max(np.abs(probs - torch_probs)) < 1e-3
    np.testing.assert_allclose(confidences, probs.max(1), atol=1e-6)

    client = httpclient.InferenceServerClient(url=triton_url)
    try:
        config = client.get_model_config(model_name)
    finally:
        client.close()
    assert config["max_batch_size"] == 64 and config["backend"] == "python"
    assert [(i["name"], i["data_type"]) for i in config["input"]] == [("TEXT", "TYPE_STRING")]
    assert [(o["name"], o["data_type"]) for o in config["output"]] == [
        ("LABEL", "TYPE_STRING"), ("CONFIDENCE", "TYPE_FP32"), ("PROBS", "TYPE_FP32")]

    # ModelRegistered landed on this test's models topic, keyed task/version
    records = await read_topic(kafka_settings, topics["graduate.models"], min_count=1)
    (event,) = decode_all(codec, records, ModelRegistered)
    assert records[0].key == f"{TASK}/{run.version}".encode()
    assert (event.task, event.version, event.triton_model) == (TASK, str(run.version), model_name)
    assert event.small_accuracy == pytest.approx(holdout["small_accuracy"])
    assert event.holdout_size == holdout["n"] and event.labels == run.report["labels"]
    assert event.artifact_uri == run.version_dir.resolve().as_uri()
    assert event.threshold is None or 0.0 < event.threshold <= 1.0
    # the threshold is the trainer's fixed-sequence search of the gate's own test, which the gate replays
    from services.controller.gate import evaluate_offline
    from services.controller.settings import ControllerSettings

    metrics = json.loads(event.metrics_json)
    search = metrics["threshold_search"]
    assert search["method"] == "fixed-sequence" and search["steps"] and search["threshold"] == event.threshold
    assert [s["threshold"] for s in search["steps"]] == sorted((s["threshold"] for s in search["steps"]), reverse=True)
    assert metrics["fit"]["epochs"] == 2 and 0.0 <= metrics["fit"]["validation_accuracy"] <= 1.0
    assert 0.0 <= metrics["fit"]["best_validation_accuracy"] <= 1.0 and metrics["fit"]["epochs_run"] >= 1
    checks = {c.name: c.status for c in evaluate_offline(event, None, ControllerSettings()).checks}
    assert checks.get("threshold_search", "pass") == "pass", checks  # absent only when no threshold was found

    # the train labels the model disputes: published (first LISTED) and all in the run folder; each is an
    # unreviewed train row whose label the model, asked again here, does not answer
    review = metrics["label_review"]
    every = json.loads((run.run_dir / "disputed_labels.json").read_text())
    assert review["disputed"] == len(every) and review["items"] == every[:review["listed"]]
    train = await asyncio.to_thread(_train_split, tmp_path)
    assert review["rows"] == len(train.input)
    rows = {c: (text, label, reviewed) for c, text, label, reviewed in
            zip(train.call_id, train.input, train.label, train.reviewed)}
    if every:
        again = predict_logits(load_pooled(hf), AutoTokenizer.from_pretrained(hf), [i["input"] for i in every],
                               settings.max_length, "cpu").argmax(1)
        for item, answer in zip(every, again):
            text, label, reviewed = rows[item["call_id"]]
            assert (item["input"], item["label"], reviewed) == (text, label, False)
            assert item["model_label"] == run.report["labels"][answer] != label


def _train_split(var_dir: Path):
    from trainer.snapshot import load_snapshot, resolve_snapshot

    return load_snapshot(resolve_snapshot(var_dir / "datasets", TASK)).train


def _holdout_texts(var_dir: Path) -> list[str]:
    from trainer.snapshot import load_snapshot, resolve_snapshot

    return load_snapshot(resolve_snapshot(var_dir / "datasets", TASK)).holdout.input
