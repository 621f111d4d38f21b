"""The demo's pipeline end to end on a small sample, with every service a real process.

Runs `python -m services.demo.run` against the Kafka and Triton that `make test` started (or the
ones the environment names), with few calls, one short epoch and the controller's sample sizes
scaled down, then checks the story it tells in demo-report/facts.json: capture counts, the
candidates ranking, a served model, the gate's decisions with their evidence, small-mode answers
with fallback, the demotion on drift with a retrain request, the trainer worker answering that
request with a new version that passes both gates again, and no process left behind.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.settings import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]  # the run itself is bounded below
TASK = "banking77-intent"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> dict:
    """Run the demo once (small sample) and return its facts and headline figures."""
    root = tmp_path_factory.mktemp("demo")
    router, sim, worker = free_ports(3)
    env = {
        **os.environ,
        "GRADUATE_VAR_DIR": str(root / "var"),
        "GRADUATE_KAFKA_BOOTSTRAP": os.environ.get("GRADUATE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        "GRADUATE_TRITON_URL": os.environ.get("GRADUATE_TRITON_URL", os.environ.get("GRADUATE_TRITON_HTTP_URL",
                                                                                    "127.0.0.1:8000")),
        "GRADUATE_DEMO_REPORT_DIR": str(root / "report"),
        "GRADUATE_DEMO_ROUTER_PORT": str(router),
        "GRADUATE_DEMO_SIM_PORT": str(sim),
        "GRADUATE_DEMO_WORKER_BASE_PORT": str(worker),
        # a small sample: twelve intents (+ the launch's six), few calls, short training, a faster simulator
        "GRADUATE_DEMO_INTENTS": "12",
        "GRADUATE_DEMO_TRAIN_CALLS": "1500",
        "GRADUATE_CURATOR_HOLDOUT_FRACTION": "0.25",  # enough gold for the gate's paired test
        "GRADUATE_DEMO_SHADOW_CALLS": "200",
        "GRADUATE_DEMO_SMALL_CALLS": "150",
        # the launch: enough of its inputs that the retrain has about as many examples per new intent as per old one
        "GRADUATE_DEMO_DRIFT_CALLS": "700",
        "GRADUATE_DEMO_DRIFT_SHARE": "0.85",
        # after the retrain: every test input of the 12 intents not sent yet, and the launch's test inputs
        "GRADUATE_DEMO_REGATE_CALLS": "250",
        "GRADUATE_DEMO_REGATE_SHARE": "0.25",  # about the holdout's share of them: the calibration predicts the fallback
        "GRADUATE_DEMO_EPOCHS": "2",
        "GRADUATE_DEMO_REVIEW_SHARE": "1.0",
        "GRADUATE_DEMO_SIM_ACCURACY": "0.95",  # a frontier hard to match: the threshold leaves some fallback
        "GRADUATE_DEMO_SIM_LATENCY_MIN_MS": "100",
        "GRADUATE_DEMO_SIM_LATENCY_MAX_MS": "200",
        "GRADUATE_TRAIN_MIN_REVIEWED_GOLD": "100",
        # the controller's sample sizes, scaled to the sample
        "GRADUATE_CONTROLLER_MIN_HOLDOUT": "100",
        "GRADUATE_CONTROLLER_MIN_SHADOW_COMPARISONS": "100",
        "GRADUATE_CONTROLLER_MIN_SHADOW_KEPT": "40",
        "GRADUATE_CONTROLLER_WINDOW_SIZE": "150",
        "GRADUATE_CONTROLLER_MIN_WINDOW": "80",
    }
    log = root / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.demo.run"], cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            proc.wait(1000)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the demo stops everything it started on SIGTERM
            try:
                proc.wait(120)
            finally:
                proc.kill()
                subprocess.run(["bash", "deploy/local/stop-services.sh"], cwd=REPO_ROOT, env=env)
            pytest.fail(f"the demo ran past 1000 s:\n{log.read_text()[-4000:]}")
    output = log.read_text()
    report = root / "report"
    assert (report / "facts.json").exists(), output[-5000:]
    facts = json.loads((report / "facts.json").read_text())
    headline = json.loads((report / "headline.json").read_text())
    return {"rc": proc.returncode, "output": output, "facts": facts, "headline": headline,
            "report": report, "var": root / "var"}


def test_the_demo_runs_to_the_end(story):
    assert story["rc"] == 0, story["output"][-6000:]
    assert story["facts"]["meta"]["status"] == "complete"
    page = (story["report"] / "README.md").read_text()
    assert "SIMULATOR" in page
    for plot in ("latency.png", "coverage.png", "fallback.png", "cost.png"):
        assert (story["report"] / plot).stat().st_size > 1000, plot


def test_every_call_was_captured(story):
    capture = story["facts"]["capture"]
    assert capture["ok"][TASK] == capture["sent"][TASK] >= 1000  # every pre-launch train input of the 12 intents
    assert capture["captured"][TASK] == capture["ok"][TASK]
    assert capture["captured"]["draft-reply"] == capture["ok"]["draft-reply"] > 0


def test_candidates_rank_banking77_first_and_tell_draft_reply_to_stay(story):
    ranking = story["facts"]["candidates"]["ranking"]
    first, = [c for c in ranking if c["task"] == TASK]
    assert ranking[0]["task"] == TASK and first["recommendation"] == "graduate"
    assert {t["name"] for t in first["traits"] if t["passed"]} >= {
        "high_volume", "narrow_stable_output", "latency_or_cost_sensitive", "cheap_training_data"}
    draft, = [c for c in ranking if c["task"] == "draft-reply"]
    assert draft["recommendation"] != "graduate" and draft["failing"]


def test_a_model_was_trained_served_and_asked(story):
    facts = story["facts"]
    training = facts["training"]
    assert training["version"] and training["triton_model"].startswith(TASK)
    registered = training["registered"]
    held_out = set(facts["drift"]["labels"])
    assert held_out and not held_out & set(registered["labels"])  # the launch's intents were never trained on
    assert len(facts["small_answers"]) >= 400  # Triton answered the gold evaluation directly


def test_the_gates_decided_with_evidence(story):
    decisions = story["facts"]["decisions"]
    offline = next(d for d in decisions if d["gate"] == "offline")
    assert offline["mode"] == "shadow" and offline["verdict"] == "pass"
    assert offline["evidence"]["statistics"]["n"] >= 100 and offline["evidence"]["checks"]
    cutover = next(d for d in decisions if d["mode"] == "small")
    assert cutover["gate"] == "shadow" and cutover["threshold"] is not None
    assert cutover["evidence"]["counts"]["compared"] >= 100


def test_small_mode_served_locally_with_fallback(story):
    small = [c for c in story["facts"]["calls"] if c["phase"] == "small" and c["ok"]]
    served = {c["served_by"] for c in small}
    assert {"small", "fallback"} <= served
    assert all(c["confidence"] is not None for c in small if c["served_by"] == "small")
    assert story["headline"]["fallback"]["observed"]["n"] == len(small)


def test_drift_demotes_the_task_and_asks_for_a_retrain(story):
    decisions = story["facts"]["decisions"]
    demotion = next(d for d in decisions if d["verdict"] == "demoted")
    assert demotion["mode"] == "shadow" and demotion["ts"] >= story["facts"]["drift"]["started"]
    assert any(c["status"] == "fail" for c in demotion["evidence"]["checks"])  # the breach it saw
    assert story["facts"]["drift"]["retrain_request"]["task"] == TASK


def test_the_trainer_worker_answers_the_retrain_request(story):
    facts = story["facts"]
    request, retrain = facts["drift"]["retrain_request"], facts["retrain"]
    training = retrain["training"]
    assert training["by"] == "graduate worker trainer"
    assert training["answered_request_id"] == request["request_id"] == retrain["request"]["request_id"]
    assert training["version"] != facts["training"]["version"]
    registered = training["registered"]
    assert registered["snapshot_id"] == retrain["snapshot"]["id"] != facts["snapshot"]["derived"]
    held_out = set(facts["drift"]["labels"])
    assert held_out <= set(registered["labels"])  # trained on the whole fresh snapshot: the launch's intents too
    assert retrain["snapshot"]["launch_rows"]["train"] > 0 and retrain["snapshot"]["launch_reviewed"]["holdout"] > 0
    assert retrain["snapshot"]["counts"]["train"] > facts["snapshot"]["counts"]["train"]


def test_the_retrained_version_passes_both_gates_and_serves(story):
    facts = story["facts"]
    retrain = facts["retrain"]
    new = retrain["training"]["version"]
    offline, shadow, final = retrain["offline"], retrain["shadow"], retrain["final"]
    assert offline["verdict"] == "pass" and offline["mode"] == "shadow" and offline["model_version"] == new
    assert offline["evidence"]["statistics"]["n"] >= 100
    assert shadow["verdict"] == "pass" and shadow["mode"] == "small" and shadow["model_version"] == new
    assert shadow["evidence"]["counts"]["compared"] >= 100
    assert final["mode"] == "small" and final["model_version"] == new
    assert final["threshold"] == retrain["training"]["registered"]["threshold"]
    after = [c for c in facts["calls"] if c["phase"] in ("retrain-shadow", "retrain-small") and c["ok"]
             and c["served_by"] in ("small", "fallback")]
    assert after and {c["model_version"] for c in after if c["served_by"] == "small"} == {new}
    figures = story["headline"]["retrain"]
    assert figures["fallback"]["after"]["n"] == len(after)
    gold = figures["gold"]
    assert gold["n_launch"] > 0 and gold["previous"]["launch_intents"]["value"] == 0  # it never knew them
    assert gold["new"]["launch_intents"]["value"] > 0.5


def test_the_routing_history_tells_the_whole_cycle(story):
    decisions = [d for d in story["facts"]["decisions"] if d["verdict"] != "refused"]
    first, new = story["facts"]["training"]["version"], story["facts"]["retrain"]["training"]["version"]
    assert [(d["gate"], d["verdict"], d["mode"], d["model_version"]) for d in decisions] == [
        ("offline", "pass", "shadow", first), ("shadow", "pass", "small", first), ("watch", "demoted", "shadow", first),
        ("offline", "pass", "shadow", new), ("shadow", "pass", "small", new)]
    page = (story["report"] / "README.md").read_text()
    assert "## Retrain and re-gate" in page and story["facts"]["retrain"]["request"]["request_id"] in page


def test_every_process_it_started_is_gone(story):
    meta = story["facts"]["meta"]
    assert meta["left_running"] == []
    assert meta["pids"] and not [pid for pid in meta["pids"] if alive(pid)]
    assert not list((story["var"] / "run").glob("*.pid"))
