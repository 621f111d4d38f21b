"""Local processes of graduate (`graduate up` and the demo): Kafka and Triton through
deploy/local/*.sh, every graduate service as its own process with a pid file under <var>/run (the
convention deploy/local/stop-services.sh follows), and stopping all of it again — on success, on
failure and on Ctrl-C.

Kafka and Triton are started only when no external one is named (GRADUATE_KAFKA_BOOTSTRAP,
GRADUATE_TRITON_URL) and none of ours already runs; whatever the demo did not start it leaves running.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import httpx

from services.common.settings import REPO_ROOT

KAFKA_SH = REPO_ROOT / "deploy" / "local" / "kafka" / "kafka.sh"
TRITON_SH = REPO_ROOT / "deploy" / "local" / "triton" / "triton.sh"
GRADUATE = Path(sys.executable).with_name("graduate")
STOP_GRACE_S = 20.0


class StackError(RuntimeError):
    """A process did not start or become ready; the text says which and where its log is."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    pid_file: Path
    log_file: Path


@dataclass
class Stack:
    """Starts and stops the demo's processes."""

    var_dir: Path
    env: dict[str, str]  # every graduate process
    script_env: dict[str, str]  # kafka.sh and triton.sh
    say: Callable[[str], None] = print
    services: list[Service] = field(default_factory=list)
    owned_scripts: list[Path] = field(default_factory=list)  # kafka.sh / triton.sh we started
    started_pids: list[int] = field(default_factory=list)  # every graduate process ever started here

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    # -- Kafka and Triton ----------------------------------------------------------------------
    def start_backbone(self, external_kafka: bool, external_triton: bool) -> None:
        """Start Kafka and Triton unless external ones are named or ours already run."""
        for script, external, what in ((KAFKA_SH, external_kafka, "Kafka"), (TRITON_SH, external_triton, "Triton")):
            if external:
                self.say(f"{what}: using the one named in the environment or already running (left running)")
                continue
            if self._script(script, "status", check=False).returncode == 0:
                self.say(f"{what}: already running (left running afterwards)")
                continue
            result = self._script(script, "start", check=False)
            if result.returncode != 0:
                raise StackError(f"{what} did not start:\n{result.stdout[-3000:]}")
            self.owned_scripts.append(script)
            self.say(f"{what}: started ({result.stdout.strip().splitlines()[-1] if result.stdout.strip() else 'ok'})")

    def _script(self, script: Path, command: str, *, check: bool) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script), command], env=self.script_env, cwd=REPO_ROOT, check=check,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)

    # -- graduate processes --------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], extra_env: Optional[dict[str, str]] = None) -> Service:
        """Start `graduate ARGS` in its own session, its pid in <var>/run/NAME.pid, its log in <var>/log."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"{name}.log"
        with log_file.open("wb") as log:  # one run per log
            process = subprocess.Popen([str(GRADUATE), *args], cwd=REPO_ROOT, env={**self.env, **(extra_env or {})},
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        pid_file = self.run_dir / f"{name}.pid"
        pid_file.write_text(f"{process.pid}\n")
        service = Service(name, process, pid_file, log_file)
        self.started_pids.append(process.pid)
        self.services.append(service)
        return service

    def wait_ready(self, service: Service, probe: Callable[[], bool], timeout_s: float) -> float:
        """Poll `probe` until it holds; StackError (with the log's tail) if the process dies or time runs out."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if service.process.poll() is not None:
                raise StackError(f"{service.name} exited with {service.process.returncode} during start; "
                                 f"log {service.log_file}:\n{tail(service.log_file)}")
            try:
                if probe():
                    return time.monotonic() - started
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.25)
        raise StackError(f"{service.name} not ready after {timeout_s:.0f} s; log {service.log_file}:\n"
                         f"{tail(service.log_file)}")

    def check_alive(self) -> None:
        """StackError naming any service that has died since it started."""
        for s in self.services:
            if s.process.poll() is not None:
                raise StackError(f"{s.name} died (exit {s.process.returncode}); log {s.log_file}:\n{tail(s.log_file)}")

    def stop_service(self, service: Service) -> None:
        stop_process(service.process)
        service.pid_file.unlink(missing_ok=True)
        if service in self.services:
            self.services.remove(service)

    def stop_services(self) -> list[str]:
        """SIGTERM every process started here at once, then wait for each (SIGKILL after the grace)."""
        services = list(self.services)
        for service in services:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in services:
            self.stop_service(service)
        return [s.name for s in services]

    def stop_backbone(self) -> list[str]:
        """Stop Kafka and Triton if (and only if) this stack started them."""
        stopped = []
        for script in reversed(self.owned_scripts):
            self._script(script, "stop", check=False)
            stopped.append(script.parent.name)
        self.owned_scripts.clear()
        return stopped

    def stop(self) -> list[str]:
        return self.stop_services() + self.stop_backbone()

    def pids(self) -> list[int]:
        return [s.process.pid for s in self.services]


def stop_process(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, wait, then SIGKILL the process's whole session (it was started in its own)."""
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children it may have left behind
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        pass


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    return httpx.get(url, timeout=timeout_s).status_code == 200
