"""`graduate`: the command line of every service, worker and operator task.

Each service registers its own commands from `services/<name>/cli.py` (a `register(app)`
function); heavy imports (torch, faust) stay inside the commands so `graduate --help` is fast.
"""
from __future__ import annotations

import asyncio
import importlib
import json

import typer
from rich.console import Console
from rich.table import Table

from services.common.catalog import CATALOG, topic_name
from services.common.kafka import ensure_topics
from services.common.settings import CommonSettings, load_settings

app = typer.Typer(help=__doc__.splitlines()[0], no_args_is_help=True, add_completion=False)
topics_app = typer.Typer(help="The topic catalog: list it, create what is missing, report drift.",
                         no_args_is_help=True)
app.add_typer(topics_app, name="topics")
console = Console()

# Modules that add commands; each exposes register(app).
COMMAND_MODULES = (
    "services.router.cli",
    "services.frontier_sim.cli",
    "services.workers",
    "services.profiler.cli",
    "services.curator.cli",
    "services.judge.cli",
    "services.controller.cli",
    "services.review.cli",
    "trainer.cli",
    "deploy.cli",
    "services.demo.cli",
    "services.up",
)


def _format_ms(ms: str | None) -> str:
    if ms is None:
        return "-"
    v = int(ms)
    if v < 0:
        return "forever"
    return f"{v / 86_400_000:g} d" if v >= 86_400_000 else f"{v / 1000:g} s"


def _print_states(states) -> None:
    table = Table(title="graduate topics")
    for col in ("topic", "partitions", "cleanup", "retention", "state"):
        table.add_column(col)
    for s in states:
        state = ("[red]missing[/red]" if not s.exists else "[yellow]drift: " + "; ".join(s.drift) + "[/yellow]"
                 if s.drift else "[green]created[/green]" if s.created else "[green]ok[/green]")
        table.add_row(s.name, str(s.partitions or s.spec.partitions),
                      s.config.get("cleanup.policy", s.spec.cleanup_policy),
                      "compacted" if s.spec.cleanup_policy == "compact" else
                      _format_ms(s.config.get("retention.ms", str(s.spec.retention_ms) if s.spec.retention_ms else None)),
                      state)
    console.print(table)


@topics_app.command("ensure")
def topics_ensure(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Create missing topics with the catalog's configs; exit 1 when an existing topic drifts."""
    from services.common.kafka import ReplicationError

    settings = load_settings(CommonSettings)
    try:
        states = asyncio.run(ensure_topics(settings.kafka, settings.topic_namespace))
    except ReplicationError as exc:
        raise SystemExit(f"graduate topics ensure: {exc}") from None
    if settings.schema_registry_url:
        _register_schemas(settings, quiet=as_json)
    if as_json:
        print(json.dumps([{"topic": s.name, "created": s.created, "partitions": s.partitions,
                           "config": {k: s.config.get(k) for k in s.spec.config()}, "drift": s.drift}
                          for s in states], indent=2))
    else:
        _print_states(states)
    if any(s.drift for s in states):
        raise typer.Exit(1)


@topics_app.command("list")
def topics_list() -> None:
    """Show every catalog topic and its state on the broker."""
    from aiokafka.admin import AIOKafkaAdminClient

    from services.common.kafka import describe_topics

    settings = load_settings(CommonSettings)

    async def run():
        admin = AIOKafkaAdminClient(**settings.kafka.client_config())
        await admin.start()
        try:
            return await describe_topics(admin, CATALOG, settings.topic_namespace, settings.kafka.max_message_bytes)
        finally:
            await admin.close()

    _print_states(asyncio.run(run()))


def _register_schemas(settings: CommonSettings, quiet: bool = False) -> None:
    from services.common.codec import Codec
    from services.common.registry import RegistryError

    codec = Codec.from_settings(settings)
    try:
        ids = asyncio.run(codec.register_schemas(compatibility=settings.schema_registry_compatibility))
    except RegistryError as exc:
        console.print(f"[red]schema registry: {exc}[/red]")
        raise typer.Exit(1) from exc
    if not quiet:
        console.print(f"registered {len(ids)} value subjects at {codec.registry.safe_url} "
                      f"({settings.schema_registry_compatibility}): "
                      + ", ".join(f"{s}={i}" for s, i in ids.items()))


@topics_app.command("schemas")
def topics_schemas() -> None:
    """Register every topic's value schema under <topic>-value (registry mode only)."""
    settings = load_settings(CommonSettings)
    if not settings.schema_registry_url:
        console.print("GRADUATE_SCHEMA_REGISTRY_URL is not set: single-object encoding, nothing to register")
        raise typer.Exit(2)
    _register_schemas(settings)


@topics_app.command("tail")
def topics_tail(topic: str = typer.Argument(..., help="e.g. disagreements or graduate.calls.captured"),
                as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
                last: int = typer.Option(10, "--last", "-n", min=0, help="records per partition to start with"),
                follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new records")) -> None:
    """Print a topic's latest records, decoded (either encoding); commits nothing."""
    from services.common.codec import Codec
    from services.common.tail import find_topic, tail

    settings = load_settings(CommonSettings)
    try:
        spec = find_topic(topic, settings.topic_namespace)
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(2) from exc

    async def run() -> int:
        n = 0
        async for record in tail(settings.kafka, spec, Codec.from_settings(settings), settings.topic_namespace,
                                 last=last, follow=follow):
            print(record.as_json() if as_json else record.as_line(), flush=True)
            n += 1
        return n

    try:
        n = asyncio.run(run())
    except LookupError as exc:  # the topic is not on the broker
        console.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        return
    if not as_json:
        console.print(f"[dim]{n} records from {topic_name(spec, settings.topic_namespace)}[/dim]", highlight=False)


@topics_app.command("catalog")
def topics_catalog() -> None:
    """Print the catalog itself (no broker needed)."""
    table = Table(title="topic catalog")
    for col in ("topic", "key", "value", "partitions", "policy", "written by", "read by"):
        table.add_column(col)
    for s in CATALOG:
        table.add_row(topic_name(s), s.key, s.value.__name__, str(s.partitions), s.cleanup_policy, s.written_by, s.read_by)
    console.print(table)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that part of graduate is not built in this checkout
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
