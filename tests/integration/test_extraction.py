"""Extraction end to end on Restaurant-8k: a real tiny token-classification fine-tune served by the
real Triton (answers equal to the trainer's and to torch's), ModelRegistered on the real Kafka,
then the real router in small mode with the real simulator as the frontier: confident requests
served from Triton, a request whose least confident field is below the threshold sent to the
frontier and captured.

One fine-tune for the module (about 500 utterances, 2 epochs, 32 tokens: a minute or two on two
busy cores), under a uuid-suffixed Triton model name, unloaded and deleted afterwards.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import uuid

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from rich.console import Console

from services.common.catalog import CALLS_CAPTURED, ROUTER_OUTCOMES, ROUTING_DECISIONS, topic_name
from services.common.contracts import CapturedCall, ModelRegistered, RouterOutcome, RoutingDecision
from services.common.settings import REPO_ROOT, CommonSettings
from services.common.tasks import ParseFailure, load_tasks
from services.router.keys import create_key
from tests.integration.test_router import RouterServer, free_port, graduate_command, router_settings, wait_http
from tests.support import decode_all, produce, read_topic
from trainer.calibrate import softmax
from trainer.extraction import serve
from trainer.extraction.dataset_from_restaurant8k import build_restaurant8k_snapshot
from trainer.pipeline import train_extraction_task
from trainer.extraction.triton_model import decode_fields, fields_json
from trainer.publish import publish_model_registered
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration

TASK = "restaurant8k-booking"
FIELDS = ["people", "time", "date", "first_name", "last_name"]


@pytest.fixture(scope="module")
def spec():
    return load_tasks(CommonSettings().tasks_file).get(TASK)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, spec, triton_urls, model_repository):
    """(settings, run): one tiny fine-tune, loaded into the real Triton and verified by the trainer."""
    client = httpclient.InferenceServerClient(url=triton_urls["http"])
    try:
        if not client.is_server_ready():
            pytest.fail(f"Triton at {triton_urls['http']} is not ready")
    except Exception as error:  # noqa: BLE001 - any connection failure means the same here
        pytest.fail(f"no Triton at {triton_urls['http']} ({error}); run deploy/local/triton/triton.sh start")
    finally:
        client.close()
    var = tmp_path_factory.mktemp("extraction")
    build_restaurant8k_snapshot(var / "datasets", spec, REPO_ROOT / "data" / "restaurant8k", max_train=800,
                                max_holdout=320, reviewed_share=0.3)
    name = f"{TASK}-it-{uuid.uuid4().hex[:10]}"
    settings = TrainerSettings(var_dir=var, model_repository=model_repository, triton_http_url=triton_urls["http"],
                               triton_model=name, epochs=2, max_length=32, batch_size=16, learning_rate=2e-4,
                               validation_fraction=0.15, quantize=False, device="cpu", threads=1,
                               verify_examples=64, publish=False)
    try:
        yield settings, train_extraction_task(settings, TASK, "latest", Console(stderr=True, width=120), spec)
    finally:
        unload_and_wait(triton_urls["http"], model_repository, name)


def unload_and_wait(url: str, repository, name: str, timeout_s: float = 60.0) -> None:
    """Unload the model and wait until Triton is done with it (a model still unloading makes the
    whole server not ready for the next test), then delete its folder."""
    client = httpclient.InferenceServerClient(url=url)
    try:
        client.unload_model(name)
        deadline = time.monotonic() + timeout_s
        while (client.is_model_ready(name) or not client.is_server_ready()) and time.monotonic() < deadline:
            time.sleep(0.2)
    except Exception:  # noqa: BLE001 - never loaded (the run failed early): nothing to wait for
        pass
    finally:
        client.close()
        shutil.rmtree(repository / name, ignore_errors=True)


def holdout_texts(settings: TrainerSettings) -> list[str]:
    from trainer.snapshot import load_snapshot, resolve_snapshot

    return load_snapshot(resolve_snapshot(settings.datasets_dir, TASK)).holdout.input


def torch_answers(run, texts: list[str], max_length: int) -> tuple[list[str], np.ndarray]:
    """The fine-tuned torch model's answers, decoded with the served code's decoder."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from trainer.extraction.finetune import predict_token_logits

    tokenizer = AutoTokenizer.from_pretrained(run.run_dir / "hf")
    model = AutoModelForTokenClassification.from_pretrained(run.run_dir / "hf")
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    logits = predict_token_logits(model, enc["input_ids"], tokenizer.pad_token_id, "cpu")
    labels, field_conf = [], []
    for text, row, offsets, special in zip(texts, logits, enc["offset_mapping"], enc["special_tokens_mask"]):
        real = [i for i, (s, e) in enumerate(offsets) if not special[i] and e > s]
        values, conf = decode_fields(text, softmax(row[real], run.report["temperature"]),
                                     [offsets[i] for i in real], FIELDS)
        labels.append(fields_json(values, FIELDS))
        field_conf.append(conf)
    return labels, np.array(field_conf)


async def test_a_tiny_fine_tune_learns_the_fields_and_triton_answers_like_the_trainer(
        trained, spec, topics, namespace, kafka_settings, codec, triton_urls):
    settings, run = trained
    holdout = run.report["holdout"]
    assert holdout["n"] >= 280 and holdout["gold_reviewed"] > 50
    for name in ("people", "time"):  # the always-null baseline has span-F1 0
        field = holdout["per_field"][name]
        assert field["small"]["span_f1"] > 0.6, (name, field)
        assert field["small"]["exact_match"] > field["null_baseline_exact_match"] + 0.1, (name, field)
    assert run.report["parity"]["ok"] and run.report["parity"]["argmax_agreement"] >= 0.999
    assert run.report["triton_verify"]["label_agreement"] == 1.0

    # Triton answers every holdout text like torch, decoded by the served code
    texts = holdout_texts(settings)
    labels, confidence, field_conf = serve.extract(triton_urls["http"], settings.triton_model, run.version, texts)
    torch_labels, torch_conf = torch_answers(run, texts, settings.max_length)
    assert np.mean([a == b for a, b in zip(labels, torch_labels)]) >= 0.995
    assert np.max(np.abs(field_conf - torch_conf)) < 1e-3
    np.testing.assert_allclose(confidence, field_conf.min(axis=1), atol=1e-6)
    assert all(spec.parse_output(label) == label for label in labels)  # the task's canonical JSON

    client = httpclient.InferenceServerClient(url=triton_urls["http"])
    try:
        config = client.get_model_config(settings.triton_model)
    finally:
        client.close()
    assert [(o["name"], o["data_type"]) for o in config["output"]] == [
        ("LABEL", "TYPE_STRING"), ("CONFIDENCE", "TYPE_FP32"), ("FIELD_CONFIDENCE", "TYPE_FP32")]

    # ModelRegistered: the same contract, request-level figures, per-field ones in metrics_json
    await publish_model_registered(CommonSettings(kafka=kafka_settings, topic_namespace=namespace), run.event, codec)
    records = await read_topic(kafka_settings, topics["graduate.models"], min_count=1)
    (event,) = decode_all(codec, records, ModelRegistered)
    assert records[0].key == f"{TASK}/{run.version}".encode()
    assert event.labels == FIELDS and event.triton_model == settings.triton_model
    assert event.holdout_size == holdout["n"]
    metrics = json.loads(event.metrics_json)
    assert metrics["kind"] == "extraction" and set(metrics["per_field"]) == set(FIELDS) == set(metrics["per_field_paired"])
    assert metrics["per_field"]["people"]["small"]["span_f1"] == pytest.approx(holdout["per_field"]["people"]["small"]["span_f1"])
    assert sum(metrics["paired_at_threshold"].values()) == metrics["holdout"]["n"] or metrics["gate_basis"] == "reviewed"
    # the search tested the request and every field at each candidate; the gate replays it
    from services.controller.gate import evaluate_offline
    from services.controller.settings import ControllerSettings

    steps = metrics["threshold_search"]["steps"]
    assert steps and all(set(s["tables"]) == {"request"} | {f"field:{f}" for f in FIELDS} for s in steps)
    checks = {c.name: c.status for c in evaluate_offline(event, None, ControllerSettings()).checks}
    assert checks.get("threshold_search", "pass") == "pass", checks


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    """`graduate frontier-sim` on a free port (5–10 ms latency): the frontier for extraction too."""
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "sim.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*graduate_command(), "frontier-sim", "--port", str(port), "--latency-ms", "5-10",
                                 "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def frontier_answer(simulator: str, spec, text: str) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{simulator}/chat/completions", headers={"X-Graduate-Task": TASK}, json={
            "model": "gpt-4o-mini", "messages": [{"role": "system", "content": spec.prompt()},
                                                 {"role": "user", "content": text}]})
    return reply.json()["choices"][0]["message"]["content"]


async def test_the_router_serves_confident_extractions_and_falls_back_below_the_threshold(
        trained, spec, topics, tmp_path, namespace, kafka_settings, codec, triton_urls, simulator):
    settings, run = trained
    texts, warm_up = holdout_texts(settings)[:24], holdout_texts(settings)[30]
    labels, confidence, _ = serve.extract(triton_urls["http"], settings.triton_model, run.version, texts)
    threshold = float(np.median(confidence))
    keep = confidence >= threshold
    assert 0 < keep.sum() < len(texts)

    key = create_key(tmp_path / "keys.json", "booking-service")
    router = RouterServer(router_settings(tmp_path, kafka_settings, namespace, simulator, triton_urls["grpc"])).start()
    served: list[tuple[str, dict]] = []  # every request answered in small mode
    try:
        decision = RoutingDecision(task=TASK, mode="small", model_version=str(run.version), threshold=threshold,
                                   triton_model=settings.triton_model, reason="test", decided_by="test")
        await produce(kafka_settings, codec, topic_name(ROUTING_DECISIONS, namespace), [(TASK, decision)])
        async with httpx.AsyncClient(base_url=router.url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=30) as http:
            for _ in range(100):  # until the decision is applied (answers before it are the frontier's)
                body = (await http.post(f"/v1/tasks/{TASK}/predict", json={"input": warm_up})).json()
                if body.get("served_by") != "frontier":
                    served.append((warm_up, body))
                    break
                await asyncio.sleep(0.2)
            for text in texts:
                served.append((text, (await http.post(f"/v1/tasks/{TASK}/predict", json={"input": text})).json()))
    finally:
        router.stop()

    assert served and served[0][0] == warm_up, "the router never applied the small-mode decision"
    for text, label, conf, kept, (_, body) in zip(texts, labels, confidence, keep, served[1:]):
        if kept:
            assert (body["served_by"], body["output"]) == ("small", label), body
        else:
            assert body["served_by"] == "fallback", body
            assert body["output"] == as_served(spec, await frontier_answer(simulator, spec, text))
        assert body["confidence"] == pytest.approx(float(conf), abs=1e-6)

    fallbacks = sorted(text for text, body in served if body["served_by"] == "fallback")
    calls = decode_all(codec, await read_topic(kafka_settings, topic_name(CALLS_CAPTURED, namespace),
                                               min_count=len(fallbacks)), CapturedCall)
    assert sorted(c.input for c in calls if c.source == "fallback") == fallbacks
    assert all(c.task == TASK and c.output == as_served(spec, c.output_raw) for c in calls if c.parse_ok)
    outcomes = decode_all(codec, await read_topic(kafka_settings, topic_name(ROUTER_OUTCOMES, namespace),
                                                  min_count=len(served)), RouterOutcome)
    mine = [o for o in outcomes if o.mode == "small"]
    assert len(mine) == len(served)
    assert sum(o.served_by == "small" for o in mine) == sum(body["served_by"] == "small" for _, body in served)
    assert {o.fallback_reason for o in mine if o.served_by == "fallback"} == {"low_confidence"}


def as_served(spec, raw: str) -> str:
    """What the router serves for a frontier answer: the parsed JSON, or the raw text if it does not parse."""
    try:
        return spec.parse_output(raw)
    except ParseFailure:
        return raw
