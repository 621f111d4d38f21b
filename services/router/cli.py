"""`graduate serve router` and `graduate keys create|list`.

`serve_app` is the `serve` sub-command group; another service that needs `graduate serve X`
imports it from here and adds its command.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import sys
from typing import Callable, Optional

import typer

serve_app = typer.Typer(help="Run a server (router, …).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the router: create one (printed once), list them.", no_args_is_help=True)


@serve_app.command("router")
def serve_router(
    host: Optional[str] = typer.Option(None, help="bind address [GRADUATE_ROUTER_HOST, 127.0.0.1]"),
    port: Optional[int] = typer.Option(None, help="port [GRADUATE_ROUTER_PORT, 8080]"),
    metrics_port: Optional[int] = typer.Option(None, help="/metrics port [GRADUATE_ROUTER_METRICS_PORT, 9464]"),
    log_level: str = typer.Option("info", help="log level"),
    access_log: bool = typer.Option(False, help="log every request"),
) -> None:
    """Serve the router: OpenAI-compatible chat completions, per-task predict, capture, routing."""
    import uvicorn

    from services.router.app import create_app
    from services.router.settings import load_router_settings

    options = {"host": host, "port": port, "metrics_port": metrics_port}
    settings = load_router_settings(**{k: v for k, v in options.items() if v is not None})
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per frontier call is access-log noise
    app = create_app(settings)
    api = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                                        access_log=access_log, log_config=log_config(), timeout_graceful_shutdown=5))
    servers = [api]
    if settings.metrics_port is not None:
        servers.append(uvicorn.Server(uvicorn.Config(app.state.metrics_app, host=settings.metrics_host,
                                                     port=settings.metrics_port, log_level="warning",
                                                     access_log=False, lifespan="off")))
    run = asyncio.run
    if settings.loop == "uvloop":
        import uvloop

        run = uvloop.run
    run(serve_together(servers, started=lambda: tune_runtime(settings)))


def tune_runtime(settings) -> None:
    """Once the router has started (imports done, lifespan run): what is alive now stays alive, so it
    leaves the garbage collector's generations (no full collection walks it again: shorter pauses on
    the request path), and the GIL is handed back to the request loop sooner."""
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()
    sys.setswitchinterval(settings.switch_interval_s)


async def serve_together(servers: list, started: Optional[Callable[[], None]] = None) -> None:
    """Run uvicorn servers in one loop (the API and /metrics on its own port); when one stops (a
    signal, a port in use), the others are told to stop too. `started` is called once the first has
    started."""
    tasks = [asyncio.ensure_future(s.serve()) for s in servers]
    if started is not None:
        while not servers[0].started and not tasks[0].done():
            await asyncio.sleep(0.05)
        if servers[0].started:
            started()
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.should_exit = True
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class HideQueryString(logging.Filter):
    """The access log writes paths without their query string: a client may put a secret there."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def log_config() -> dict:
    """uvicorn's logging config with HideQueryString on the access log."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["hide_query"] = {"()": HideQueryString}
    config["handlers"]["access"]["filters"] = ["hide_query"]
    return config


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="who the key is for, e.g. the calling service"),
    tasks: str = typer.Option("*", help="comma-separated tasks the key may use ('*' = all)"),
    role: str = typer.Option("service", help="service (calls tasks) or reviewer (review UI)"),
) -> None:
    """Create a key; it is printed once and only its SHA-256 is stored."""
    from services.router.keys import create_key
    from services.router.settings import load_router_settings

    if role not in ("service", "reviewer"):
        raise typer.BadParameter("expected service or reviewer", param_hint="--role")
    settings = load_router_settings()
    wanted = tuple(t.strip() for t in tasks.split(",") if t.strip())
    try:
        key = create_key(settings.keys_file, name, role, wanted)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME") from None
    typer.echo(key)
    typer.echo(f"stored the hash of key {name!r} ({role}, tasks {','.join(wanted)}) in {settings.keys_file}; "
               f"the key is not shown again; a running router takes it within {settings.keys_check_s:g} s", err=True)


@keys_app.command("list")
def keys_list() -> None:
    """Names, roles and tasks of the keys (never the keys)."""
    from services.router.keys import read_keys
    from services.router.settings import load_router_settings

    settings = load_router_settings()
    for k in read_keys(settings.keys_file).keys:
        typer.echo(f"{k.name}\t{k.role}\t{','.join(k.tasks)}\t{k.created.isoformat()}")


def register(app: typer.Typer) -> None:
    app.add_typer(serve_app, name="serve")
    app.add_typer(keys_app, name="keys")
