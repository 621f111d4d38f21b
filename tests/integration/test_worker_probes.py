"""A real worker's /readyz and /livez: ready once assigned and restored, not live once a handler
is stuck with records waiting (tests/integration/holdup_app.py holds one call forever)."""
from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

from services.common.catalog import CALLS_CAPTURED, topic_name
from services.common.settings import REPO_ROOT
from tests.integration.test_workers import (Worker, app_topics, free_port, freeform_calls,  # noqa: F401 (fixture)
                                            produce_to_partition, stop_worker, wait_for, worker_env)


def probe(worker: Worker, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def test_a_stuck_handler_fails_liveness_and_readiness_holds(topics, app_topics, namespace,  # noqa: F811
                                                                    kafka_settings, codec, tmp_path):
    captured = topic_name(CALLS_CAPTURED, namespace)
    calls = freeform_calls(6)
    port = free_port()
    log = tmp_path / "holdup-probes.log"
    env = worker_env(namespace, kafka_settings, tmp_path, GRADUATE_TEST_MODE="event", GRADUATE_TEST_HOLD=calls[2].call_id,
                     GRADUATE_WORKER_WEB_PORT=str(port), GRADUATE_WORKER_DATADIR=str(tmp_path / "data"),
                     GRADUATE_WORKER_INSTANCE_ID=f"{namespace}holdup", GRADUATE_WORKER_STALL_AFTER_S="3")
    with log.open("a") as out:
        proc = subprocess.Popen([str(REPO_ROOT / ".venv" / "bin" / "python"), "-m", "tests.integration.holdup_app"],
                                env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    worker = Worker("holdup", port, proc, log)
    try:
        await wait_for(lambda: probe(worker, "/readyz")[0] == 200, 120, "the worker to be ready", worker)
        status, body = probe(worker, "/readyz")
        assert body == {"ready": True, "reasons": [], "partitions": 12}  # the only member of its group
        assert probe(worker, "/livez") == (200, {"live": True, "reason": None})

        await produce_to_partition(kafka_settings, codec, captured, calls)  # calls[2] is held, 3 wait behind it
        await wait_for(lambda: f"holding {calls[2].call_id}" in log.read_text(), 60, "the handler to hold", worker)
        status, body = await wait_for(lambda: (r := probe(worker, "/livez"))[0] == 503 and r, 60,
                                      "/livez to report the stall", worker)
        assert body["live"] is False and "records waiting and nothing handled" in body["reason"]
        assert probe(worker, "/readyz")[0] == 200  # still assigned and restored: only liveness restarts it
    finally:
        rc = stop_worker(worker)
    assert rc == 0, worker.tail()
