"""`graduate worker NAME`: run one stream processor (a faust app) or the trainer service.

Stream processors live in `services/<NAME>/app.py` and expose a faust `app` built with
`services.common.streams.make_app`; the trainer exposes `trainer.service:run()` (async). The
command-line options are applied as GRADUATE_WORKER_* settings before the app module is
imported, because the app reads its settings at import. SIGTERM stops the worker cleanly.

`graduate worker trainer --exit-when-drained` is the trainer as a Kubernetes Job (a KEDA
ScaledJob starts one per pending retrain request): it trains what waits and exits 0 once its
consumer group has committed everything on the retrain-requests topic, so no GPU idles after a run.
"""
from __future__ import annotations

import asyncio
import importlib
import os
import signal
from pathlib import Path
from typing import Optional

import typer

PROCESSORS = ("profiler", "curator", "shadow", "judge", "controller")
SERVICES = PROCESSORS + ("trainer",)


def apply_overrides(web_port: Optional[int], datadir: Optional[Path], instance_id: Optional[str],
                    log_level: Optional[str], environ: dict | None = None) -> None:
    """Turn command-line options into the GRADUATE_WORKER_* settings the app will read."""
    env = os.environ if environ is None else environ
    for var, value in (("GRADUATE_WORKER_WEB_PORT", web_port), ("GRADUATE_WORKER_DATADIR", datadir),
                       ("GRADUATE_WORKER_INSTANCE_ID", instance_id), ("GRADUATE_WORKER_LOG_LEVEL", log_level)):
        if value is not None:
            env[var] = str(value)


def ensure_datadir(path: Path) -> Path:
    """Create the worker's data folder (and its parents), or exit saying why it cannot be had."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"graduate worker: cannot create the data folder {path}: {exc.strerror or exc} "
                         f"(choose another with --datadir or GRADUATE_WORKER_DATADIR)") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SystemExit(f"graduate worker: the data folder {path} is not writable by this user "
                         f"(choose another with --datadir or GRADUATE_WORKER_DATADIR)")
    return path


def run_faust_worker(name: str) -> None:
    import faust

    from services.common.streams import ensure_app_topics

    module = importlib.import_module(f"services.{name}.app")
    app = module.app
    ensure_datadir(Path(str(app.conf.datadir)))
    asyncio.run(ensure_app_topics(app))  # faust never consumes a topic missing at its start
    settings = app._graduate.settings
    worker = faust.Worker(app, loglevel=settings.worker_log_level, redirect_stdouts=False)
    worker.execute_from_commandline()  # installs SIGTERM/SIGINT handlers, stops the app cleanly


def drained(committed: dict, ends: dict) -> bool:
    """Every partition's committed offset has reached its end (a partition never committed counts
    as drained only when it is empty)."""
    return all(max(committed.get(tp) or 0, 0) >= end for tp, end in ends.items())  # -1: none committed


async def group_drained(kafka, group: str, topic: str) -> bool:
    """Whether consumer group `group` has committed every record of `topic`."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka.client_config())
    probe = AIOKafkaConsumer(**kafka.client_config(), group_id=None, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    try:
        described = await admin.describe_topics([topic])
        parts = [p["partition"] for t in described if t.get("error_code") == 0 for p in t["partitions"]]
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = await probe.end_offsets(tps) if tps else {}
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps or None)
        return drained({tp: meta.offset for tp, meta in offsets.items() if meta is not None}, ends)
    finally:
        await probe.stop()
        await admin.close()


async def stop_when_drained(stop: asyncio.Event, settings, interval: float = 5.0, grace: float = 30.0) -> None:
    """Set `stop` once the trainer's group has drained its topic twice in a row (after `grace` s,
    so the consumer has joined and fetched what woke the Job)."""
    from services.common.catalog import RETRAIN_REQUESTS, topic_name

    group = f"{settings.topic_namespace}{settings.consumer_group}"
    topic = topic_name(RETRAIN_REQUESTS, settings.topic_namespace)
    await asyncio.sleep(grace)
    streak = 0
    while not stop.is_set():
        try:
            streak = streak + 1 if await group_drained(settings.kafka, group, topic) else 0
        except Exception as exc:  # noqa: BLE001 - Kafka away: keep the Job running, look again
            streak = 0
            print(f"trainer: cannot read the group's offsets ({exc}); looking again", flush=True)
        if streak >= 2:
            stop.set()
            return
        await asyncio.sleep(interval)


def run_trainer_service(exit_when_drained: bool = False) -> None:
    from trainer.service import run
    from trainer.settings import TrainerSettings

    async def main() -> None:
        settings = TrainerSettings()
        stop = asyncio.Event()
        task = asyncio.ensure_future(run(settings, stop=stop))
        watch = asyncio.ensure_future(stop_when_drained(stop, settings)) if exit_when_drained else None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            if watch is not None:
                watch.cancel()

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        name: str = typer.Argument(..., help=f"one of: {', '.join(SERVICES)}"),
        web_port: Optional[int] = typer.Option(None, "--web-port", help="faust web port (/metrics)"),
        datadir: Optional[Path] = typer.Option(None, "--datadir", help="faust data folder of this worker"),
        instance_id: Optional[str] = typer.Option(None, "--instance-id", help="static group membership id"),
        log_level: Optional[str] = typer.Option(None, "--log-level"),
        exit_when_drained: bool = typer.Option(False, "--exit-when-drained",
                                               help="trainer only: exit 0 once every retrain request is handled "
                                                    "(a Kubernetes Job per request)"),
    ) -> None:
        """Run one stream processor (faust worker) or the trainer service until SIGTERM."""
        if name not in SERVICES:
            raise typer.BadParameter(f"unknown worker {name!r}; one of: {', '.join(SERVICES)}")
        apply_overrides(web_port, datadir, instance_id, log_level)
        if exit_when_drained and name != "trainer":
            raise typer.BadParameter("--exit-when-drained is for the trainer")
        if name == "trainer":
            run_trainer_service(exit_when_drained)
        else:
            run_faust_worker(name)
