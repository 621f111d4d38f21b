"""`graduate dataset snapshot|review-queue|forget`: the curator's commands."""
from __future__ import annotations

import asyncio
import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
dataset_app = typer.Typer(help="The dataset: snapshots for the trainer and the review queue.", no_args_is_help=True)


def _settings():
    from services.common.settings import CommonSettings, load_settings
    from services.curator.settings import CuratorSettings

    return load_settings(CommonSettings), load_settings(CuratorSettings)


def _task(common, task: str):
    from services.common.tasks import load_tasks

    try:
        return load_tasks(common.tasks_file).get(task)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None


@dataset_app.command("snapshot")
def snapshot(task: str = typer.Option(..., "--task", help="task name from config/tasks.yaml"),
             holdout_fraction: Optional[float] = typer.Option(None, "--holdout-fraction", min=0.0, max=0.99),
             as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON")) -> None:
    """Read the captured and reviewed topics to their end and write a versioned snapshot."""
    from services.curator.snapshot import take_snapshot

    common, curator = _settings()
    spec = _task(common, task)
    fraction = curator.holdout_fraction if holdout_fraction is None else holdout_fraction
    folder, manifest = asyncio.run(take_snapshot(common, spec, fraction))
    if as_json:
        print(json.dumps({"path": str(folder), **manifest}, indent=2))
        return
    cur = manifest["curation"]
    console.print(f"[bold]{manifest['snapshot_id']}[/bold] -> {folder}")
    console.print(f"train {manifest['counts']['train']} (reviewed {manifest['reviewed']['train']}), "
                  f"holdout {manifest['counts']['holdout']} (reviewed {manifest['reviewed']['holdout']}); "
                  f"{cur['calls']} calls, {cur['distinct_inputs']} distinct inputs, {cur['duplicate_calls']} duplicates, "
                  f"{cur['conflicting_inputs']} conflicting inputs, {cur['parse_failures']} parse failures")


@dataset_app.command("review-queue")
def review_queue_cmd(task: str = typer.Option(..., "--task"),
                     limit: Optional[int] = typer.Option(None, "--limit", min=1),
                     as_json: bool = typer.Option(False, "--json")) -> None:
    """Holdout examples to review: disagreements, low-confidence shadow results, a stratified sample."""
    from services.curator.snapshot import review_queue

    common, curator = _settings()
    _task(common, task)
    items = asyncio.run(review_queue(common, task, holdout_fraction=curator.holdout_fraction,
                                     limit=limit or curator.review_limit, low_confidence=curator.review_low_confidence))
    if as_json:
        print(json.dumps([i.as_dict() for i in items], indent=2))
        return
    table = Table(title=f"review queue: {task}")
    for col in ("call_id", "reason", "frontier", "small", "conf", "input"):
        table.add_column(col)
    for i in items:
        table.add_row(i.call_id, i.reason, i.frontier_label or "-", i.small_output or "-",
                      "-" if i.confidence is None else f"{i.confidence:.2f}", i.input[:60])
    console.print(table)


@dataset_app.command("forget")
def forget(task: str = typer.Option(..., "--task"),
           text: Optional[str] = typer.Option(None, "--input", help="the input as a caller sent it"),
           digest: Optional[str] = typer.Option(None, "--input-hash", help="its normalised hash (hex, 64 digits)"),
           reason: Optional[str] = typer.Option(None, "--reason"),
           requested_by: str = typer.Option("cli", "--by", help="who asked (kept with the deletion)")) -> None:
    """Remove an input from the dataset for good: tombstones in the dataset topic, and a deletion the
    curator keeps, so a replay of older captured calls never brings it back."""
    import re

    from services.common.codec import Codec
    from services.curator.forget import forget_input, hash_of_input

    common, _ = _settings()
    spec = _task(common, task)
    if (text is None) == (digest is None):
        raise typer.BadParameter("give exactly one of --input and --input-hash")
    if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise typer.BadParameter("--input-hash must be 64 lowercase hex digits (sha256)")
    digest = digest or hash_of_input(spec, text)
    n = asyncio.run(forget_input(common, Codec(common.schema_registry_url), task, digest, requested_by=requested_by,
                                 reason=reason))
    print(f"forgot {task}/{digest}: deletion recorded, {n} dataset partitions tombstoned")


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
