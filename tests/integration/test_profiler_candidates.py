"""`graduate candidates` and the profiler worker on a replayed stream (real broker, real worker)."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from services.common.catalog import CALLS_CAPTURED, ROUTER_OUTCOMES, topic_name
from services.common.contracts import RouterOutcome
from tests.integration.test_curator_worker import run_cli
from tests.integration.test_workers import (BANKING, FREEFORM, T_END, banking77_calls, freeform_calls, start_worker,
                                            stop_worker, wait_for, worker_env)
from tests.support import produce

pytestmark = pytest.mark.integration


async def test_candidates_rank_the_hot_narrow_task_above_the_open_ended_one(
        topics, namespace, kafka_settings, codec, tmp_path):
    replay = banking77_calls(3000, prefix="p")
    free = freeform_calls(150)
    await produce(kafka_settings, codec, topic_name(CALLS_CAPTURED, namespace),
                  [(c.call_id, c) for c in replay.calls + free])
    outcomes = [RouterOutcome(call_id=f"o{i}", task=BANKING, mode="small", ts=T_END - timedelta(minutes=i % 60),
                              served_by="fallback" if i % 8 == 0 else "small", latency_ms=25.0, small_latency_ms=14.0)
                for i in range(400)]
    await produce(kafka_settings, codec, topic_name(ROUTER_OUTCOMES, namespace), [(o.call_id, o) for o in outcomes])

    out_file = tmp_path / "candidates.json"
    env = worker_env(namespace, kafka_settings, tmp_path)
    table = run_cli(["candidates", "--json", str(out_file)], env | {"COLUMNS": "200"})
    ranked = json.loads(out_file.read_text())
    assert [c["task"] for c in ranked] == [BANKING, FREEFORM]
    bank, draft = ranked
    assert bank["recommendation"] == "graduate" and bank["failing"] == []
    assert bank["measures"]["calls"] == 3000 and bank["measures"]["requests"] == 3000 + 350
    assert bank["measures"]["distinct_outputs"] <= 77
    assert bank["measures"]["parse_failure_rate"] == pytest.approx(10 / 3000, abs=1e-4)
    assert bank["economics"]["fallback_rate_measured"] and bank["economics"]["fallback_rate"] == pytest.approx(0.125)
    assert bank["economics"]["monthly_saving_usd"] > 0
    assert draft["recommendation"] == "stay on frontier"
    assert {"high_volume", "narrow_stable_output", "cheap_training_data"} <= set(draft["failing"])
    narrow = next(t for t in draft["traits"] if t["name"] == "narrow_stable_output")
    assert "repeat an output" in narrow["reason"]
    assert "graduate" in table and "stay on frontier" in table and "assumptions" in table

    worker = start_worker("profiler", namespace, kafka_settings, tmp_path)
    try:
        def caught_up():
            got = worker.get("/profiler/candidates/")
            counts = {c["task"]: (c["measures"]["calls"], c["measures"]["outcomes"]) for c in got}
            return got if counts == {BANKING: (3000, 400), FREEFORM: (150, 0)} else None

        live = await wait_for(caught_up, 180, "the profiler to take in every call", worker)
        assert [c["task"] for c in live] == [BANKING, FREEFORM]
        assert live[0]["measures"]["distinct_outputs"] == bank["measures"]["distinct_outputs"]
        assert live[0]["measures"]["calls_per_day"] == bank["measures"]["calls_per_day"]
        assert live[1]["recommendation"] == "stay on frontier"
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()
