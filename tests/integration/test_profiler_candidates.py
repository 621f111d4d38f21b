"""`graduate candidates` and the profiler worker on a replayed stream (real broker, real worker)."""
from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest

from services.common.catalog import CALLS_CAPTURED, ROUTER_OUTCOMES, topic_name
from services.common.contracts import CapturedCall, RouterOutcome
from services.common.settings import REPO_ROOT, CommonSettings
from services.common.tasks import load_tasks, parse_fields
from services.profiler.report import read_profiles
from tests.integration.test_curator_worker import run_cli
from tests.integration.test_workers import (BANKING, FREEFORM, T_END, banking77_calls, freeform_calls, start_worker,
                                            stop_worker, wait_for, worker_env)
from tests.support import produce

pytestmark = pytest.mark.integration

RESTAURANT = "restaurant8k-booking"


def restaurant_calls(n: int, *, span_hours: float = 2.0, broken: int = 10) -> list[CapturedCall]:
    """A hot extraction task: every answer a distinct JSON object with the spec's fields (as the
    router captures them), some inputs re-asked, a few answers that failed to parse."""
    spec = load_tasks(REPO_ROOT / "config" / "tasks.yaml").get(RESTAURANT)
    rng = random.Random(8)
    start = T_END - timedelta(hours=span_hours)
    out = []
    for i in range(n):
        k = i if i < n - 100 else rng.randrange(n - 100)  # the last 100 re-ask earlier inputs
        r = random.Random(k)
        fields = {"people": str(r.randint(1, 12)), "time": f"{r.randint(5, 10)}:{r.choice(['00', '30'])} pm",
                  "date": r.choice(["today", "Friday", None]), "first_name": r.choice(["Ann", "Bob", None, None]),
                  "last_name": f"Lee{k}" if r.random() < 0.3 else None}
        raw = json.dumps(fields)
        ok = i % (n // broken) != 7
        out.append(CapturedCall(call_id=f"r{i:05d}", task=RESTAURANT, ts=start + timedelta(hours=span_hours * i / n),
                                input=f"Hi, a table please, booking {k}", output_raw=raw if ok else "Booked!",
                                output=parse_fields(raw, spec.fields) if ok else None, parse_ok=ok,
                                latency_ms=rng.lognormvariate(6.5, 0.3), prompt_tokens=450, completion_tokens=40,
                                cost_usd=0.0015, model="frontier-sim"))
    return out


async def test_candidates_rank_the_hot_narrow_task_above_the_open_ended_one(
        topics, namespace, kafka_settings, codec, tmp_path):
    replay = banking77_calls(3000, prefix="p")
    free = freeform_calls(150)
    booking = restaurant_calls(2000)
    await produce(kafka_settings, codec, topic_name(CALLS_CAPTURED, namespace),
                  [(c.call_id, c) for c in replay.calls + free + booking])
    outcomes = [RouterOutcome(call_id=f"o{i}", task=BANKING, mode="small", ts=T_END - timedelta(minutes=i % 60),
                              served_by="fallback" if i % 8 == 0 else "small", latency_ms=25.0, small_latency_ms=14.0)
                for i in range(400)]
    await produce(kafka_settings, codec, topic_name(ROUTER_OUTCOMES, namespace), [(o.call_id, o) for o in outcomes])

    out_file = tmp_path / "candidates.json"
    env = worker_env(namespace, kafka_settings, tmp_path)
    table = run_cli(["candidates", "--json", str(out_file)], env | {"COLUMNS": "200"})
    ranked = json.loads(out_file.read_text())
    assert [c["task"] for c in ranked] == [BANKING, RESTAURANT, FREEFORM]
    bank, rest, draft = ranked
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
    # the extraction task: every JSON object distinct, yet narrow by its structure
    assert rest["recommendation"] == "graduate" and rest["failing"] == []
    assert rest["measures"]["kind"] == "extraction" and rest["measures"]["distinct_outputs"] > 1000
    assert rest["measures"]["conform_rate"] == pytest.approx(0.995)
    assert rest["measures"]["field_stats"]["people"]["distinct_values"] == 12
    narrow = next(t for t in rest["traits"] if t["name"] == "narrow_stable_output")
    assert narrow["reason"].startswith("JSON with 5 known fields, 99.5% of answers conform; stability 100% on ")
    assert "JSON with 5 known fields" in table
    assert draft["measures"]["kind"] == "freeform"
    assert "free-form output" in next(t for t in draft["traits"] if t["name"] == "narrow_stable_output")["reason"]

    worker = start_worker("profiler", namespace, kafka_settings, tmp_path)
    try:
        def caught_up():
            got = worker.get("/profiler/candidates/")
            counts = {c["task"]: (c["measures"]["calls"], c["measures"]["outcomes"]) for c in got}
            return got if counts == {BANKING: (3000, 400), RESTAURANT: (2000, 0), FREEFORM: (150, 0)} else None

        live = await wait_for(caught_up, 180, "the profiler to take in every call", worker)
        assert [c["task"] for c in live] == [BANKING, RESTAURANT, FREEFORM]
        assert live[0]["measures"]["distinct_outputs"] == bank["measures"]["distinct_outputs"]
        assert live[0]["measures"]["calls_per_day"] == bank["measures"]["calls_per_day"]
        assert live[1]["measures"]["conform_rate"] == rest["measures"]["conform_rate"]
        assert live[1]["measures"]["field_stats"] == rest["measures"]["field_stats"]
        assert next(t for t in live[1]["traits"] if t["name"] == "narrow_stable_output") == narrow
        assert live[1]["recommendation"] == "graduate" and live[2]["recommendation"] == "stay on frontier"
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()

    # the stopped worker checkpointed its profiles: the report now reads those and replays nothing
    common = CommonSettings(kafka=kafka_settings, topic_namespace=namespace)
    profiles = await read_profiles(common, codec)
    assert (profiles.replayed_calls, profiles.replayed_outcomes) == (0, 0)
    run_cli(["candidates", "--json", str(out_file)], env)
    assert json.loads(out_file.read_text()) == ranked
    # calls captured after the checkpoint are replayed, and only they
    later = [c.model_copy(update={"call_id": f"late{i}"}) for i, c in enumerate(replay.calls[:20])]
    await produce(kafka_settings, codec, topic_name(CALLS_CAPTURED, namespace), [(c.call_id, c) for c in later])
    profiles = await read_profiles(common, codec)
    assert (profiles.replayed_calls, profiles.replayed_outcomes) == (20, 0)
    assert profiles.by_task[BANKING].calls == 3020 and profiles.by_task[RESTAURANT].calls == 2000
