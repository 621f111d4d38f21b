"""The trainer's Triton config in the real Triton: a lone request is not held back by a queue delay,
and requests that arrive together run in batches (fewer executions than inferences).

The model is the keyword model of tests/support_triton.py under the config.pbtxt that the trainer
writes (trainer.triton_repo.config_pbtxt), loaded into the running tritonserver.
"""
from __future__ import annotations

import queue
import time
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.support_triton import load_model, unload_and_remove, write_keyword_model
from trainer import triton_repo

pytestmark = pytest.mark.integration

LOAD = 64  # requests sent at once (8 clients' worth of 8 in flight each)


@pytest.fixture
def trainer_config_model(triton_urls, model_repository):
    name = f"kwb-{uuid.uuid4().hex[:8]}"
    write_keyword_model(model_repository, {"arrive": "card_arrival"}, "card_linking", name=name,
                        config=triton_repo.config_pbtxt(name))
    load_model(triton_urls["http"], name)
    yield name
    unload_and_remove(triton_urls["http"], model_repository, name)


def text_input(text: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    return tensor


def counts(client: grpcclient.InferenceServerClient, name: str, inferences: int) -> tuple[int, int]:
    """(inferences, executions) Triton has counted for the model, once it has counted `inferences`
    (Triton updates its statistics just after it answers)."""
    for _ in range(200):
        [stats] = client.get_inference_statistics(name, as_json=True)["model_stats"]
        counted = int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))
        if counted[0] >= inferences:
            return counted
        time.sleep(0.05)
    return counted


def test_a_lone_request_runs_at_once_and_a_crowd_runs_in_batches(triton_urls, trainer_config_model):
    name = trainer_config_model
    client = grpcclient.InferenceServerClient(triton_urls["grpc"])
    try:
        batching = client.get_model_config(name, as_json=True)["config"]["dynamic_batching"]
        assert int(batching.get("max_queue_delay_microseconds", 0)) == 0  # no wait for company
        assert int(client.get_model_config(name, as_json=True)["config"]["max_batch_size"]) >= LOAD

        answer = client.infer(name, [text_input("my card did not arrive")])
        assert answer.as_numpy("LABEL").reshape(-1)[0] == b"card_arrival"
        assert counts(client, name, 1) == (1, 1)  # alone: one execution of batch 1

        done: queue.Queue = queue.Queue()
        for i in range(LOAD):
            client.async_infer(name, [text_input(f"card {i} did not arrive")],
                               callback=lambda result, error: done.put((result, error)))
        results = [done.get(timeout=60) for _ in range(LOAD)]
        assert [error for _, error in results if error is not None] == []
        assert {r.as_numpy("LABEL").reshape(-1)[0] for r, _ in results} == {b"card_arrival"}
        inferences, executions = counts(client, name, 1 + LOAD)
        assert inferences == 1 + LOAD
        assert executions < 1 + LOAD, f"{LOAD} requests at once ran in {executions - 1} executions: no batching"
    finally:
        client.close()
