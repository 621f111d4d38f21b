"""Processes the reliability suite starts and kills: its own broker, its own Triton, the router
and the simulator as real processes. Everything here is started by a fixture and stopped in a
`finally`; the shared Kafka (9092) and Triton (8000/8001) are never touched.

The helpers other suites already have are imported, not copied: `free_port`/`wait_http`
(tests/integration/test_router.py), `OwnBroker` (tests/integration/test_router_kafka_outage.py),
`Worker` (tests/integration/test_shadow_judge.py).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.common.settings import KafkaSettings, REPO_ROOT
from tests.integration.test_router import free_port, wait_http
from tests.integration.test_router_kafka_outage import OwnBroker

GRADUATE = str(REPO_ROOT / ".venv" / "bin" / "graduate")
TRITON_SH = REPO_ROOT / "deploy" / "local" / "triton" / "triton.sh"
TASK = "banking77-intent"


def knob(name: str, default: float) -> float:
    """A size of the suite, from GRADUATE_RELIABILITY_<NAME> (short defaults for `make test`)."""
    return type(default)(os.environ.get(f"GRADUATE_RELIABILITY_{name}", default))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_dead(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still alive {timeout} s after SIGKILL")
        time.sleep(0.05)


class KillableBroker(OwnBroker):
    """OwnBroker (its own var dir and ports) that can also be SIGKILLed: the JVM whose command line
    carries -Dgraduate.kafka.var=<its var dir>/kafka, i.e. the pid kafka.sh wrote there."""

    def __init__(self, var_dir: Path) -> None:
        super().__init__(var_dir)
        self.var_dir = var_dir

    def pid(self) -> int:
        pid = int((self.var_dir / "kafka" / "pid").read_text().strip())
        marker = f"-Dgraduate.kafka.var={(self.var_dir / 'kafka').resolve()}"
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert marker.encode() in cmdline, f"pid {pid} is not this test's broker"
        return pid

    def sigkill(self) -> None:
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)


class OwnTriton:
    """A tritonserver of the suite's own (deploy/local/triton/triton.sh with its own var dir, ports and
    model repository); `sigkill` kills its process group (the server and its Python-backend stubs)."""

    def __init__(self, var_dir: Path, repository: Path) -> None:
        self.var_dir, self.repository = var_dir, repository
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("GRADUATE_TRITON_URL", "GRADUATE_MODEL_REPOSITORY")}
        self.env = {**env, "GRADUATE_VAR_DIR": str(var_dir), "GRADUATE_MODEL_REPOSITORY": str(repository),
                    "GRADUATE_TRITON_HTTP_PORT": str(self.http), "GRADUATE_TRITON_GRPC_PORT": str(self.grpc),
                    "GRADUATE_TRITON_METRICS_PORT": str(self.metrics)}

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def run(self, command: str) -> None:
        done = subprocess.run(["bash", str(TRITON_SH), command], env=self.env, capture_output=True, text=True,
                              timeout=240)
        if done.returncode != 0:
            raise RuntimeError(f"triton.sh {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def pid(self) -> int:
        return int((self.var_dir / "triton" / "tritonserver.pid").read_text().strip())

    def sigkill(self) -> None:
        pid = self.pid()
        assert b"tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes(), f"pid {pid} is not our tritonserver"
        os.killpg(pid, signal.SIGKILL)  # triton.sh starts it with setsid: its own process group
        wait_dead(pid)


@dataclass
class Proc:
    """A graduate process (router, simulator) with its output in a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    url: str
    proc: subprocess.Popen | None = None
    health: str = "/healthz"
    metrics_url: str = ""  # where /metrics is served (the router: a port of its own); default `url`

    def __post_init__(self) -> None:
        self.metrics_url = self.metrics_url or self.url

    def start(self, timeout: float = 120.0) -> "Proc":
        with self.log.open("a") as out:
            self.proc = subprocess.Popen([GRADUATE, *self.args], env=self.env, cwd=REPO_ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(self.url + self.health, timeout=timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise AssertionError(f"{self.name} did not start:\n{self.tail()}") from None
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-n:])


def simulator(folder: Path, *flags: str, **env: str) -> Proc:
    """`graduate frontier-sim` (5–10 ms latency) on a free port; `url` is its base, `url + '/v1'` the API."""
    port = free_port()
    return Proc("frontier-sim", ["frontier-sim", "--port", str(port), "--latency-ms", "5-10", "--log-level", "warning",
                                 *flags], {**os.environ, **env}, folder / f"sim-{port}.log", f"http://127.0.0.1:{port}")


def router(folder: Path, *, kafka: KafkaSettings, namespace: str, frontier_url: str, triton_grpc: str,
           keys_file: Path, log_level: str = "info", access_log: bool = False, **env: str) -> Proc:
    """`graduate serve router` configured through its GRADUATE_* settings, as an operator would."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GRADUATE_ROUTER_", "GRADUATE_FRONTIER_",
                                                                       "GRADUATE_CAPTURE_"))}
    settings = {
        "GRADUATE_KAFKA_BOOTSTRAP": kafka.bootstrap, "GRADUATE_TOPIC_NAMESPACE": namespace,
        "GRADUATE_VAR_DIR": str(folder), "GRADUATE_TRITON_GRPC_URL": triton_grpc,
        "GRADUATE_ROUTER_API_KEYS_FILE": str(keys_file), "GRADUATE_ROUTER_SMALL_SAMPLE_RATE": "0",
        "GRADUATE_ROUTER_ROUTING_RETRY_S": "0.5", "GRADUATE_ROUTER_FORWARD_HEADERS": '["x-sim-fault"]',
        "GRADUATE_ROUTER_CAPTURE_NAME": f"router-{port}",
        "GRADUATE_FRONTIER_BASE_URL": frontier_url, "GRADUATE_FRONTIER_TIMEOUT_S": "2",
        "GRADUATE_FRONTIER_BACKOFF_BASE_S": "0.05", "GRADUATE_FRONTIER_BREAKER_FAILURES": "1000",
        "GRADUATE_CAPTURE_RECONNECT_BACKOFF_S": "0.5", "GRADUATE_CAPTURE_UNHEALTHY_AFTER_S": "1.0",
        **env,
    }
    metrics_port = free_port()
    settings.setdefault("GRADUATE_ROUTER_METRICS_PORT", str(metrics_port))
    args = ["serve", "router", "--host", "127.0.0.1", "--port", str(port), "--log-level", log_level]
    if access_log:
        args.append("--access-log")
    return Proc("router", args, {**base, **settings}, folder / f"router-{port}.log", f"http://127.0.0.1:{port}",
                metrics_url=f"http://127.0.0.1:{settings['GRADUATE_ROUTER_METRICS_PORT']}")


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample over the series whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def capture_drained_in(text: str) -> bool:
    """A /metrics page says the router's capture holds nothing: both its spool and its queue gauges are
    exposed, and 0. A page without them (an error page, the API port, which serves no /metrics) is not
    drained: read as 0, it let the broker-kill test read the topics while records still waited in the
    producer and the spool, and report them missing."""
    seen = {name: float(line.rpartition(" ")[2]) for line in text.splitlines() if not line.startswith("#")
            for name in ("graduate_router_spool_records", "graduate_router_capture_queue_depth")
            if line.startswith(name + " ")}
    return len(seen) == 2 and not any(seen.values())


def capture_drained(metrics_url: str) -> bool:
    """`capture_drained_in` of the router's /metrics (its own port); a scrape that fails is not drained."""
    try:
        response = httpx.get(metrics_url + "/metrics", timeout=5)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and capture_drained_in(response.text)


def scrape(url: str, name: str, **labels: str) -> float:
    try:
        return metric_value(httpx.get(url + "/metrics", timeout=5).text, name, **labels)
    except httpx.HTTPError:
        return 0.0


def until(probe, timeout: float, what: str, interval: float = 0.25, procs: tuple = ()):
    """Poll `probe()` until truthy; fails with `what` (and the logs of `procs`) after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = probe()
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        for p in procs:
            assert p.alive(), f"{p.name} died:\n{p.tail()}"
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})\n{logs}")
        time.sleep(interval)


@dataclass
class Tally:
    """Counts of what a fault test tried and saw, for docs/RELIABILITY.md."""

    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def saw(self, status: int) -> None:
        self.sent += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def summary(self) -> str:
        return ", ".join(f"{n}×{s}" for s, n in sorted(self.statuses.items()))


SECRET = re.compile(r"gr_[A-Za-z0-9_-]{20,}")


async def poll(probe, timeout: float, what: str, interval: float = 0.5, procs: tuple = ()):
    """`until` for async probes: await `probe()` until truthy."""
    import asyncio

    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = await probe()
        if last:
            return last
        for p in procs:
            assert p.alive(), f"{p.name} died:\n{p.tail()}"
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})\n{logs}")
        await asyncio.sleep(interval)
