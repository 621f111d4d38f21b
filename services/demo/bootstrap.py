"""Where everything of one demo run lives and how each process is told: the demo's one bootstrap.

`wire()` turns the demo settings and the environment into addresses, a fresh topic namespace, a
Triton model name of this run and the environment every child process gets; `start_services()`
starts the simulator, the router and every worker and waits until each is ready.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from services.common.settings import REPO_ROOT, KafkaSettings
from services.demo.settings import DemoSettings
from services.stack import Stack, http_ok

WORKERS = ("profiler", "curator", "shadow", "judge", "controller")


@dataclass(frozen=True)
class Wiring:
    run_id: str
    namespace: str
    var_dir: Path
    kafka: KafkaSettings
    external_kafka: bool
    external_triton: bool
    triton_http: str
    triton_grpc: str
    model_repository: Path
    router_url: str
    sim_url: str
    triton_model: str
    env: dict[str, str]  # what every graduate process gets
    script_env: dict[str, str]  # what kafka.sh / triton.sh get (no GRADUATE_KAFKA_BOOTSTRAP of our own)


def _host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def wire(settings: DemoSettings, environ: Mapping[str, str] = os.environ) -> Wiring:
    run_id = uuid.uuid4().hex[:8]
    namespace = settings.namespace if settings.namespace is not None else f"demo{run_id}."
    var_dir = Path(environ.get("GRADUATE_VAR_DIR") or REPO_ROOT / "var").resolve()
    external_kafka = bool(environ.get("GRADUATE_KAFKA_BOOTSTRAP"))
    bootstrap = environ.get("GRADUATE_KAFKA_BOOTSTRAP") or f"127.0.0.1:{environ.get('GRADUATE_KAFKA_PORT', '9092')}"
    external_triton = bool(environ.get("GRADUATE_TRITON_URL"))
    http = (environ.get("GRADUATE_TRITON_HTTP_URL") or _host_port(environ.get("GRADUATE_TRITON_URL", ""))
            or f"127.0.0.1:{environ.get('GRADUATE_TRITON_HTTP_PORT', '8000')}")
    grpc = environ.get("GRADUATE_TRITON_GRPC_URL") or f"127.0.0.1:{environ.get('GRADUATE_TRITON_GRPC_PORT', '8001')}"
    repository = Path(environ.get("GRADUATE_MODEL_REPOSITORY") or REPO_ROOT / "var" / "model-repository").resolve()
    router_url = f"http://127.0.0.1:{settings.router_port}"
    sim_url = f"http://127.0.0.1:{settings.sim_port}"
    script_env = {**environ, "GRADUATE_VAR_DIR": str(var_dir), "GRADUATE_MODEL_REPOSITORY": str(repository)}
    env = {
        **script_env,
        "GRADUATE_TOPIC_NAMESPACE": namespace,
        "GRADUATE_KAFKA_BOOTSTRAP": bootstrap,
        "GRADUATE_TRITON_HTTP_URL": http,
        "GRADUATE_TRITON_GRPC_URL": grpc,
        "GRADUATE_FRONTIER_BASE_URL": f"{sim_url}/v1",
        "GRADUATE_ROUTER_SMALL_SAMPLE_RATE": str(settings.small_sample_rate),
        "GRADUATE_ROUTER_CAPTURE_NAME": f"demo-router-{run_id}",
        "GRADUATE_SIM_ACCURACY": str(settings.sim_accuracy),
        "GRADUATE_SIM_LATENCY_MIN_MS": str(settings.sim_latency_min_ms),
        "GRADUATE_SIM_LATENCY_MAX_MS": str(settings.sim_latency_max_ms),
        "GRADUATE_SIM_SEED": str(settings.sim_seed),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    return Wiring(run_id, namespace, var_dir, KafkaSettings(bootstrap=bootstrap), external_kafka, external_triton,
                  http, grpc, repository, router_url, sim_url, f"{settings.task}-demo-{run_id}", env, script_env)


def start_services(stack: Stack, wiring: Wiring, settings: DemoSettings) -> dict[str, float]:
    """The SIMULATOR, the router and the five workers, each its own process; seconds until each was ready."""
    timeout = settings.start_timeout_s
    (wiring.var_dir / "faust").mkdir(parents=True, exist_ok=True)  # faust makes only the last level
    sim = stack.spawn("frontier-sim", ["frontier-sim", "--port", str(settings.sim_port), "--accuracy",
                                       str(settings.sim_accuracy), "--latency-ms",
                                       f"{settings.sim_latency_min_ms:g}-{settings.sim_latency_max_ms:g}",
                                       "--seed", str(settings.sim_seed), "--log-level", "warning"])
    workers = {name: stack.spawn(f"worker-{name}", ["worker", name, "--web-port", str(port), "--datadir",
                                                    str(wiring.var_dir / "faust" / f"{wiring.namespace}{name}"),
                                                    "--log-level", "warning"])
               for name, port in settings.worker_ports.items()}
    ready = {"frontier-sim": stack.wait_ready(sim, lambda: http_ok(f"{wiring.sim_url}/healthz"), timeout)}
    router = stack.spawn("router", ["serve", "router", "--port", str(settings.router_port), "--log-level", "warning"],
                         {"GRADUATE_ROUTER_PORT": str(settings.router_port)})
    ready["router"] = stack.wait_ready(router, lambda: http_ok(f"{wiring.router_url}/readyz"), timeout)
    for name, service in workers.items():
        port = settings.worker_ports[name]
        ready[f"worker {name}"] = stack.wait_ready(service, lambda p=port: http_ok(f"http://127.0.0.1:{p}/metrics"),
                                                   timeout)
    return ready
