"""`graduate shadow-report --task T`: how the shadowed model versions compare with the frontier."""
from __future__ import annotations

import asyncio
import json

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    @app.command("shadow-report")
    def shadow_report(
        task: str = typer.Option(..., "--task", help="the task to report"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    ) -> None:
        """The judge's latest statistics per model version: agreement, coverage, reviewed accuracy."""
        from services.common.codec import Codec
        from services.common.settings import CommonSettings, load_settings
        from services.judge.report import read_latest_stats, render, summary

        settings = load_settings(CommonSettings)
        try:
            stats = asyncio.run(read_latest_stats(settings.kafka, Codec(settings.schema_registry_url),
                                                  settings.topic_namespace, task))
        except LookupError as exc:
            raise typer.BadParameter(str(exc)) from None
        if as_json:
            print(json.dumps([summary(s) for s in stats], indent=2))
        elif not stats:
            Console(stderr=True).print(f"no shadow statistics for task {task!r} yet")
            raise typer.Exit(1)
        else:
            Console().print(render(task, stats))
