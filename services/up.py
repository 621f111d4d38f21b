"""`graduate up` (`make run`): the whole product on this machine, in the foreground, as compose runs it.

Starts Kafka and Triton (unless external ones are named or ours already run), creates the topics,
then the router, the review page, every worker including the trainer, and — unless a real
frontier is named with GRADUATE_FRONTIER_BASE_URL — the frontier simulator. It then prints one
status line per task every few seconds, read from the controller's state page, and stops all of
it on Ctrl-C (or SIGTERM), also when a process dies.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import typer

from services.common.settings import REPO_ROOT
from services.stack import GRADUATE, Stack, StackError, http_ok

WORKERS = ("profiler", "curator", "shadow", "judge", "controller")


def status_line(task: str, state: dict[str, Any]) -> str:
    """One line for one task: mode, model, graduation state and why, reviews still needed (pure)."""
    decision = state.get("decision") or {}
    mode, version = decision.get("mode", "frontier"), decision.get("model_version")
    needed = state.get("reviews_needed")
    more = f", {needed} more reviews needed" if needed else ""
    graduation = state.get("graduation", "?")
    stage = "" if graduation == mode else f" · {graduation}"
    return f"{task}: {mode}{f' ({version})' if version else ''}{stage}{more} · {state.get('reason', '')}"


def external(environ: dict[str, str], listening: Callable[[str], bool]) -> tuple[bool, bool]:
    """Whether Kafka and Triton are someone else's — named in the environment as another address, or
    already answering on ours (another run's, `make up`'s): then they are neither started nor stopped."""
    ours = f"127.0.0.1:{environ.get('GRADUATE_KAFKA_PORT', '9092')}"
    kafka = environ.get("GRADUATE_KAFKA_BOOTSTRAP") or ours
    triton = environ.get("GRADUATE_TRITON_HTTP_URL") or f"127.0.0.1:{environ.get('GRADUATE_TRITON_HTTP_PORT', '8000')}"
    return (kafka != ours or listening(kafka),
            bool(environ.get("GRADUATE_TRITON_URL")) or listening(triton))


def listening(address: str) -> bool:
    """Whether something accepts TCP connections at host:port (the first of a comma-separated list)."""
    host, _, port = address.split(",")[0].split("://")[-1].rstrip("/").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def start(stack: Stack, env: dict[str, str], *, simulator: bool, sim_port: int, router_port: int, review_port: int,
          first_worker_port: int, timeout_s: float, sim_args: tuple[str, ...] = ()) -> dict[str, int]:
    """Every process of the product; the workers' web ports by name."""
    external_kafka, external_triton = external(env, listening)
    stack.start_backbone(external_kafka, external_triton)
    subprocess.run([str(GRADUATE), "topics", "ensure"], env=env, cwd=REPO_ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    var_dir = Path(env["GRADUATE_VAR_DIR"])
    (var_dir / "faust").mkdir(parents=True, exist_ok=True)
    ports = {name: first_worker_port + i for i, name in enumerate(WORKERS)}
    probes = []
    if simulator:
        sim = stack.spawn("frontier-sim", ["frontier-sim", "--port", str(sim_port), *sim_args, "--log-level", "warning"])
        probes.append((sim, f"http://127.0.0.1:{sim_port}/healthz"))
    for name, port in ports.items():
        worker = stack.spawn(f"worker-{name}", ["worker", name, "--web-port", str(port), "--datadir",
                                                str(var_dir / "faust" / name), "--log-level", "warning"])
        probes.append((worker, f"http://127.0.0.1:{port}/metrics"))
    stack.spawn("worker-trainer", ["worker", "trainer"])
    router = stack.spawn("router", ["serve", "router", "--port", str(router_port), "--log-level", "warning"],
                         {"GRADUATE_ROUTER_PORT": str(router_port)})
    probes.append((router, f"http://127.0.0.1:{router_port}/readyz"))
    review = stack.spawn("review", ["serve", "review", "--port", str(review_port)])
    probes.append((review, f"http://127.0.0.1:{review_port}/healthz"))
    for service, url in probes:
        seconds = stack.wait_ready(service, lambda u=url: http_ok(u), timeout_s)
        stack.say(f"{service.name}: ready after {seconds:.1f} s")
    return ports


def watch(stack: Stack, controller_port: int, every_s: float) -> None:
    """Print the tasks' status lines until interrupted; StackError when a process dies."""
    while True:
        stack.check_alive()
        try:
            state = httpx.get(f"http://127.0.0.1:{controller_port}/controller/state/", timeout=5).json()
        except (httpx.HTTPError, ValueError) as exc:
            stack.say(f"controller state not readable yet ({exc})")
        else:
            stamp = time.strftime("%H:%M:%S")
            for task, s in sorted(state.items()):
                stack.say(f"{stamp} {status_line(task, s)}")
        time.sleep(every_s)


def up(simulator: Optional[bool] = typer.Option(None, "--simulator/--no-simulator",
                                                help="serve the frontier simulator (default: unless "
                                                     "GRADUATE_FRONTIER_BASE_URL names a real frontier)"),
       sim_port: int = typer.Option(8090, help="the simulator's port"),
       sim_data: list[Path] = typer.Option([], "--sim-data", help="the simulator also answers from this labelled "
                                           "folder (text,category CSVs); pair with --sim-task, repeatable"),
       sim_task: list[str] = typer.Option([], "--sim-task", help="the task the matching --sim-data labels"),
       router_port: int = typer.Option(8080, help="the router's port (point your OpenAI client here)"),
       review_port: int = typer.Option(8070, help="the review page's port"),
       first_worker_port: int = typer.Option(6070, help="the workers' web ports start here (/metrics)"),
       status_every_s: float = typer.Option(10.0, help="seconds between status lines"),
       start_timeout_s: float = typer.Option(300.0, help="how long each process may take to be ready")) -> None:
    """Run graduate here — Kafka, Triton, router, review page, every worker and the trainer — until Ctrl-C."""
    env = dict(os.environ)
    env.setdefault("GRADUATE_VAR_DIR", str(REPO_ROOT / "var"))
    env.setdefault("GRADUATE_KAFKA_BOOTSTRAP", f"127.0.0.1:{env.get('GRADUATE_KAFKA_PORT', '9092')}")
    if len(sim_data) != len(sim_task):
        raise typer.BadParameter(f"{len(sim_data)} --sim-data and {len(sim_task)} --sim-task: one task per folder")
    sim_args = tuple(a for d, t in zip(sim_data, sim_task) for a in ("--data", str(d.resolve()), "--task", t))
    if simulator is None:
        simulator = not env.get("GRADUATE_FRONTIER_BASE_URL")
    if simulator:
        env["GRADUATE_FRONTIER_BASE_URL"] = f"http://127.0.0.1:{sim_port}/v1"
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    stack = Stack(Path(env["GRADUATE_VAR_DIR"]), env, env, say=lambda text: print(text, flush=True))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ports = start(stack, env, simulator=simulator, sim_port=sim_port, router_port=router_port,
                      review_port=review_port, first_worker_port=first_worker_port, timeout_s=start_timeout_s,
                      sim_args=sim_args)
        print(f"graduate is up: router http://127.0.0.1:{router_port}/v1 (OpenAI-compatible), review page "
              f"http://127.0.0.1:{review_port}, frontier {env['GRADUATE_FRONTIER_BASE_URL']}"
              f"{' (SIMULATED)' if simulator else ''}; logs in {stack.log_dir}; Ctrl-C stops everything", flush=True)
        watch(stack, ports["controller"], status_every_s)
    except KeyboardInterrupt:
        print("stopping…", flush=True)
    except StackError as exc:
        print(f"graduate up: {exc}", flush=True)
        raise typer.Exit(1)
    finally:
        print(f"stopped: {', '.join(stack.stop()) or 'nothing'}", flush=True)


def _interrupt(signum, frame) -> None:  # noqa: ARG001 - SIGTERM stops like Ctrl-C
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    app.command("up")(up)
