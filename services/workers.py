"""`graduate worker NAME`: run one stream processor (a faust app) or the trainer service.

Stream processors live in `services/<NAME>/app.py` and expose a faust `app` built with
`services.common.streams.make_app`; the trainer exposes `trainer.service:run()` (async). The
command-line options are applied as GRADUATE_WORKER_* settings before the app module is
imported, because the app reads its settings at import. SIGTERM stops the worker cleanly.
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


def run_trainer_service() -> None:
    from trainer.service import run

    async def main() -> None:
        task = asyncio.ensure_future(run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        name: str = typer.Argument(..., help=f"one of: {', '.join(SERVICES)}"),
        web_port: Optional[int] = typer.Option(None, "--web-port", help="faust web port (/metrics)"),
        datadir: Optional[Path] = typer.Option(None, "--datadir", help="faust data folder of this worker"),
        instance_id: Optional[str] = typer.Option(None, "--instance-id", help="static group membership id"),
        log_level: Optional[str] = typer.Option(None, "--log-level"),
    ) -> None:
        """Run one stream processor (faust worker) or the trainer service until SIGTERM."""
        if name not in SERVICES:
            raise typer.BadParameter(f"unknown worker {name!r}; one of: {', '.join(SERVICES)}")
        apply_overrides(web_port, datadir, instance_id, log_level)
        if name == "trainer":
            run_trainer_service()
        else:
            run_faust_worker(name)
