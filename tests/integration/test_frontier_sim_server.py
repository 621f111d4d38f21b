"""The real simulator process over real HTTP: the official openai SDK parses its answers, its
latency overlaps across concurrent requests, fault headers fail as specified, SIGTERM stops it."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from services.common.settings import CommonSettings
from services.common.tasks import ParseFailure, load_tasks, parse_label

pytestmark = pytest.mark.integration

GRADUATE = Path(sys.executable).with_name("graduate")
TASK = "banking77-intent"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@contextmanager
def running_simulator(log_dir: Path, *flags: str) -> Iterator[str]:
    """`graduate frontier-sim` on a free port until healthy; SIGTERM afterwards, and nothing left."""
    port = free_port()
    log_path = log_dir / f"frontier-sim-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(GRADUATE), "frontier-sim", "--port", str(port), *flags],
                                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"frontier-sim exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"frontier-sim not healthy after {START_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            returncode = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("frontier-sim ignored SIGTERM for 15 s")
    log = log_path.read_text()
    assert returncode in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal after a graceful stop
    assert "Application shutdown complete" in log and "SIMULATED frontier model" in log
    assert refuses_connections(port)


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Iterator[str]:
    with running_simulator(tmp_path_factory.mktemp("sim"), "--latency-ms", "5-10") as base:
        yield base


@pytest.fixture(scope="module")
def labels() -> tuple[str, ...]:
    return load_tasks(CommonSettings().tasks_file).get(TASK).labels


def test_openai_sdk_gets_a_label_and_token_usage(sim, labels):
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="x", default_headers={"X-Graduate-Task": TASK}) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="any-model", messages=[{"role": "user", "content": "I am still waiting on my card?"}])
        completion = raw.parse()
    assert raw.headers["x-frontier-simulator"] == "true"
    assert parse_label(completion.choices[0].message.content, labels) in labels
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "graduate-frontier-sim"
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_same_answer_whichever_way_the_task_is_named(sim, labels):
    question = [{"role": "user", "content": "How long does a card take to be delivered to the US?"}]
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="x") as client:
        by_header = [client.chat.completions.create(model="m", messages=question,
                                                    extra_headers={"X-Graduate-Task": TASK}) for _ in range(2)]
        by_metadata = client.chat.completions.create(model="m", messages=question, metadata={"task": TASK})
        prompt = load_tasks(CommonSettings().tasks_file).get(TASK).prompt()
        by_prompt = client.chat.completions.create(
            model="m", messages=[{"role": "system", "content": prompt}, *question])
        freeform = client.chat.completions.create(model="m", messages=question)
    answers = {c.choices[0].message.content for c in (*by_header, by_metadata, by_prompt)}
    assert len(answers) == 1 and answers <= set(labels)
    with pytest.raises(ParseFailure):  # no task named: an open-ended reply
        parse_label(freeform.choices[0].message.content, labels)


def test_fault_headers_fail_as_asked(sim):
    body = {"model": "m", "messages": [{"role": "user", "content": "card?"}]}
    with httpx.Client(base_url=sim, headers={"X-Graduate-Task": TASK}, timeout=10.0) as http:
        server_error = http.post("/v1/chat/completions", json=body, headers={"X-Sim-Fault": "500"})
        rate_limited = http.post("/v1/chat/completions", json=body, headers={"X-Sim-Fault": "429"})
        garbage = http.post("/v1/chat/completions", json=body, headers={"X-Sim-Fault": "garbage"})
        unknown = http.post("/v1/chat/completions", json=body, headers={"X-Sim-Fault": "teapot"})
    assert server_error.status_code == 500 and server_error.json()["error"]["type"] == "server_error"
    assert rate_limited.status_code == 429 and rate_limited.headers["retry-after"] == "1"
    assert garbage.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbage.content)
    assert unknown.status_code == 400
    assert all(r.headers["x-frontier-simulator"] == "true" for r in (server_error, rate_limited, garbage, unknown))
    with openai.OpenAI(base_url=f"{sim}/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(**body, extra_headers={"X-Sim-Fault": "429"})
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(**body, extra_headers={"X-Sim-Fault": "500"})


def test_timeout_fault_outlasts_a_client_timeout(sim):
    # The hanging request is still open when the fixture SIGTERMs the server: it must stop anyway.
    with httpx.Client(base_url=sim, timeout=1.0) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", headers={"X-Sim-Fault": "timeout", "X-Graduate-Task": TASK},
                  json={"messages": [{"role": "user", "content": "card?"}]})


def test_stats_and_report_say_it_is_a_simulator(sim):
    with httpx.Client(base_url=sim, timeout=10.0) as http:
        http.post("/v1/chat/completions", headers={"X-Graduate-Task": TASK},
                  json={"messages": [{"role": "user", "content": "I am still waiting on my card?"}]})
        bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        stats = http.get("/v1/sim/stats").json()
        report = http.get("/v1/sim/report")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "body"
    assert stats["simulator"] is True and stats["configured_accuracy"] == 0.92
    assert stats["graded_answers"] >= 1 and 0.0 <= stats["realised_accuracy"] <= 1.0
    assert stats["requests"] >= 2 and stats["errors_by_kind"]["bad_request"] >= 1
    assert "SIMULATED frontier model" in report.text and report.headers["x-frontier-simulator"] == "true"


def test_concurrent_requests_overlap(tmp_path):
    async def timed(client: openai.AsyncOpenAI, i: int) -> float:
        start = time.perf_counter()
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"card {i} lost"}])
        return time.perf_counter() - start

    async def burst(base: str) -> tuple[float, list[float]]:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x",
                                      default_headers={"X-Graduate-Task": TASK}) as client:
            await timed(client, -1)  # warm the connection pool and the server
            start = time.perf_counter()
            latencies = await asyncio.gather(*(timed(client, i) for i in range(20)))
            return time.perf_counter() - start, latencies

    with running_simulator(tmp_path, "--latency-ms", "200-250") as base:
        total, latencies = asyncio.run(burst(base))
    assert min(latencies) >= 0.2
    assert total < sum(latencies) / 4, (total, sum(latencies))  # serial would take the sum
