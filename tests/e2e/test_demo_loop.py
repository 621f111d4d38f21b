"""The product runs the graduation loop by itself: the demo runner (services/demo/loop.py) on a tiny HWU64 sample.

The runner only starts `graduate up`, sends traffic with the openai SDK, reviews and approves on the
review page's HTTP API, and reads the topics. This test checks what the product did: the approval
became a training request, the trainer answered it with a model whose snapshot id is a snapshot the
curator's code wrote (manifest on disk), the offline gate gave that model a verdict on the routing
history, and nothing the run started is left running. (Whether the model reaches small mode depends
on the trainer's defaults; the verdict, whichever it is, must carry its reason.)
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

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


def free_port_block(n: int) -> int:
    """The first of `n` consecutive free ports (the runner takes a block)."""
    for first in range(20000, 30000, 50):
        socks = []
        try:
            for port in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("loop")
    env = {**os.environ,
           "GRADUATE_VAR_DIR": str(root / "var"), "GRADUATE_DEMO_REPORT_DIR": str(root / "report"),
           "GRADUATE_DEMO_SCENARIO": "hwu64", "GRADUATE_DEMO_LABELS": "8",
           "GRADUATE_DEMO_CAPTURE_CALLS": "700", "GRADUATE_DEMO_SHADOW_CALLS": "400", "GRADUATE_DEMO_CHUNK": "50",
           "GRADUATE_DEMO_READY_WAIT_S": "40", "GRADUATE_DEMO_PORTS_FROM": str(free_port_block(10)),
           "GRADUATE_DEMO_TRAIN_TIMEOUT_S": "1200",
           # an operator's choices for a small sample: the gate's sample sizes, the split, a faster simulator
           "GRADUATE_CURATOR_HOLDOUT_FRACTION": "0.25", "GRADUATE_CONTROLLER_MIN_HOLDOUT": "40",
           "GRADUATE_CONTROLLER_LOOK_INTERVAL_S": "5", "GRADUATE_CONTROLLER_MIN_SHADOW_COMPARISONS": "40",
           "GRADUATE_CONTROLLER_MIN_SHADOW_KEPT": "20",
           "GRADUATE_SIM_LATENCY_MIN_MS": "20", "GRADUATE_SIM_LATENCY_MAX_MS": "60"}
    assert not [k for k in env if k.startswith("GRADUATE_TRAIN_")], "the demo sets no trainer knobs"
    done = subprocess.run([sys.executable, "-m", "services.demo.loop"], env=env, cwd=REPO_ROOT, timeout=1400,
                          capture_output=True, text=True)
    facts_file = root / "report" / "facts.json"
    assert facts_file.exists(), (f"the demo wrote no facts (exit {done.returncode}):\n"
                                 f"{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-6000:]}")
    facts = json.loads(facts_file.read_text())
    return {"facts": facts, "out": done.stdout + done.stderr, "var": root / "var", "rc": done.returncode}


def test_the_approval_becomes_a_model_trained_on_the_trainers_own_snapshot(run):
    facts, out = run["facts"], run["out"]
    assert facts["reviewed"] >= 40, out[-3000:]
    assert facts["models"], out[-3000:]
    first = facts["models"][0]
    manifest = json.loads((run["var"] / "datasets" / "hwu64-intent" / first["snapshot_id"] / "manifest.json")
                          .read_text())
    assert first["snapshot_by_curator_code"] and manifest["snapshot_id"] == first["snapshot_id"]
    assert manifest["reviewed"]["holdout"] >= 40  # the snapshot held what the gate needs
    assert first["retrain_request_id"]  # the model answers the approval's request


def test_every_step_is_on_the_routing_history_with_its_reason(run):
    reasons = [d["reason"] for d in run["facts"]["decisions"]]
    assert any(r.startswith("graduation training: training requested (first: approved by demo-approver")
               for r in reasons), reasons
    verdicts = [r for r in reasons if "offline gate" in r or r.startswith("stays frontier")]
    assert verdicts, reasons  # the gate decided, with its reason


def test_nothing_is_left_running(run):
    run_dir = run["var"] / "run"
    assert not list(run_dir.glob("*.pid")), list(run_dir.glob("*.pid"))
    assert "stop the product" in run["out"]


def test_the_reviewer_checks_the_train_labels_the_first_model_disputes(run):
    facts = run["facts"]
    checked = facts["disputed_checked"]
    assert checked["model_version"] == facts["models"][0]["version"], checked
    assert 0 <= checked["frontier_wrong"] <= checked["checked"] <= checked["listed"], checked
    assert checked["listed"] == 0 or checked["checked"] > 0, checked  # the demo's gold covers what it sent
