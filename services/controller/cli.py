"""Controller commands: `graduate status`, `graduate approve`, `graduate route show|history|set`, `graduate gate`.

They read the topics directly (the compacted routing topic, the history, the models, the judge's
stats, recent router outcomes); `route set` writes a person's decision to the routing topic and
the history, refusing one without a reason, a `small` without a model and threshold, and a
threshold outside [0, 1].
"""
from __future__ import annotations

import asyncio
import getpass
import json
import os
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.common.contracts import RouterOutcome, RoutingDecision

console = Console()
route_app = typer.Typer(help="How each task is routed: show it, its history, or override it.", no_args_is_help=True)


def _context():
    from services.common.codec import Codec
    from services.common.settings import CommonSettings, load_settings
    from services.controller.settings import ControllerSettings

    common = load_settings(CommonSettings)
    return common, load_settings(ControllerSettings), Codec(common.schema_registry_url)


def _specs(common) -> dict:
    from services.common.tasks import load_tasks

    return {n: s for n, s in load_tasks(common.tasks_file).tasks.items() if s.graduatable}


async def _load(common, settings, codec, *, look: bool = False):
    """The controller's state from the topics; with `look`, also each waiting task's data (as the worker sees it)."""
    from services.common.settings import load_settings
    from services.controller.control import Controller
    from services.controller.store import read_signals, replay_state
    from services.curator.settings import CuratorSettings
    from services.profiler.settings import ProfilerSettings

    specs = _specs(common)
    controller = Controller(settings, {n: s.graduation for n, s in specs.items()})
    await replay_state(controller, common.kafka, codec, common.topic_namespace)
    waiting = {t: s for t, s in specs.items() if controller.needs_look(t)}
    if look and waiting:
        since = {t: ts for t in waiting if (ts := controller.drift_since(t)) is not None}
        for signal in await read_signals(common, codec, waiting, load_settings(ProfilerSettings),
                                         load_settings(CuratorSettings).holdout_fraction, settings, since):
            controller.signals[signal.task] = signal
    return controller


def _user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # no passwd entry in a container
        return "unknown"


def _evidence(d: RoutingDecision) -> dict[str, Any]:
    from services.controller.control import evidence_of

    return evidence_of(d)


def observed_fallback(outcomes: list[RouterOutcome], task: str,
                      low_confidence_reason: str) -> tuple[Optional[float], int]:
    """The threshold-fallback rate among a task's small-mode outcomes, and how many there were."""
    mine = [o for o in outcomes if o.task == task and o.mode == "small"
            and (o.served_by == "small" or (o.served_by == "fallback" and o.fallback_reason == low_confidence_reason))]
    if not mine:
        return None, 0
    return sum(o.served_by == "fallback" for o in mine) / len(mine), len(mine)


def status_rows(controller, history: list[RoutingDecision], outcomes: list[RouterOutcome]) -> list[dict[str, Any]]:
    """One row per task: how it is routed, its fallback rate and the last decision (pure)."""
    from services.controller.control import reviews_needed
    last: dict[str, RoutingDecision] = {}
    for d in history:
        last[d.task] = d
    rows = []
    for task in sorted(set(controller.tasks()) | set(last)):
        current = controller.current(task)
        rate, n = observed_fallback(outcomes, task, controller.settings.low_confidence_reason)
        latest = last.get(task, current)
        ev = _evidence(latest) if latest else {}
        graduation, signal = controller.graduation(task), controller.signals.get(task)
        rows.append({
            "task": task, "mode": current.mode if current else "frontier",
            "graduation": graduation.state, "graduation_reason": graduation.reason,
            "reviews_needed": reviews_needed(signal),
            "model_version": current.model_version if current else None,
            "threshold": current.threshold if current else None,
            "fallback_rate": rate, "fallback_n": n,
            "predicted_fallback_rate": current.predicted_fallback_rate if current else None,
            "last_decision": None if latest is None else {
                "ts": latest.ts.isoformat(), "decided_by": latest.decided_by, "mode": latest.mode,
                "gate": ev.get("gate"), "verdict": ev.get("verdict"), "reason": latest.reason}})
    return rows


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _print_decisions(title: str, decisions: list[RoutingDecision]) -> None:
    table = Table(title=title, show_lines=True)
    for col in ("#", "when (UTC)", "mode", "model", "threshold", "by", "verdict", "reason"):
        table.add_column(col, overflow="fold")
    for i, d in enumerate(decisions, 1):
        ev = _evidence(d)
        verdict = "/".join(dict.fromkeys(str(v) for v in (ev.get("gate"), ev.get("verdict")) if v)) or "-"
        table.add_row(str(i), d.ts.strftime("%Y-%m-%d %H:%M:%S"), d.mode, escape(d.model_version or "-"),
                      _fmt(d.threshold, 4), escape(d.decided_by), verdict, escape(d.reason))
    console.print(table)


def status(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Every task: mode, model version, threshold, fallback rate, the last decision and why."""
    from services.controller.store import read_history, read_outcomes

    common, settings, codec = _context()

    async def run():
        controller = await _load(common, settings, codec, look=True)
        history = await read_history(common.kafka, codec, common.topic_namespace)
        outcomes = await read_outcomes(common.kafka, codec, common.topic_namespace,
                                       settings.status_outcomes_per_partition)
        return status_rows(controller, history, outcomes)

    rows = asyncio.run(run())
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="graduate status", show_lines=True)
    for col in ("task", "mode", "graduation", "model", "threshold", "fallback (observed / predicted, n)",
                "last decision"):
        table.add_column(col, overflow="fold")
    for r in rows:
        last = r["last_decision"]
        why = "-" if last is None else (f"{last['ts'][:19]} by {last['decided_by']} "
                                        f"[{last['gate'] or '-'}/{last['verdict'] or '-'}]: {last['reason']}")
        needed = f" ({r['reviews_needed']} more reviews)" if r["reviews_needed"] else ""
        table.add_row(escape(r["task"]), r["mode"], escape(f"{r['graduation']}{needed}: {r['graduation_reason']}"),
                      escape(r["model_version"] or "-"), _fmt(r["threshold"], 4),
                      f"{_fmt(r['fallback_rate'])} / {_fmt(r['predicted_fallback_rate'])}, {r['fallback_n']}",
                      escape(why))
    if not rows:
        console.print("no task has a routing decision or a registered model yet")
    else:
        console.print(table)


def approve(task: str, reason: str = typer.Option("", "--reason", help="why (kept with the request)")) -> None:
    """Start TASK's graduation (or a retrain) now: the trainer takes a fresh snapshot and trains on it."""
    from services.common.contracts import RetrainRequest
    from services.controller.control import Effects
    from services.controller.store import publish

    common, settings, codec = _context()
    try:
        policy = _specs(common)[task].graduation
    except KeyError:
        console.print(f"[red]refused:[/red] {escape(task)} is not a graduatable task of {common.tasks_file}")
        raise typer.Exit(2)
    if policy == "off":
        console.print(f"[red]refused:[/red] {escape(task)} has graduation: off in {common.tasks_file}")
        raise typer.Exit(2)
    request = approval(task, _user(), reason, asyncio.run(_load(common, settings, codec)))
    asyncio.run(publish(common.kafka, codec, common.topic_namespace, Effects(retrains=[request])))
    console.print(f"{escape(task)}: {request.kind} model requested ({request.request_id}); the trainer takes a "
                  "fresh snapshot and dead-letters the request with the reason if the gate could not use it")


def approval(task: str, user: str, reason: str, controller) -> "RetrainRequest":
    """A person's request: the first model of a task that has none, else a manual retrain (pure)."""
    from services.common.contracts import RetrainRequest

    kind = "manual" if controller.latest_model(task) else "first"
    why = reason.strip() or f"approved by {user}"
    return RetrainRequest(task=task, kind=kind, reason=why, requested_by=user)


@route_app.command("show")
def route_show(task: str, as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The current decision of TASK with its evidence."""
    common, settings, codec = _context()
    controller = asyncio.run(_load(common, settings, codec))
    current = controller.current(task)
    if current is None:
        console.print(escape(f"{task}: no routing decision (the router serves it from the frontier)"))
        raise typer.Exit(1)
    record = current.model_dump(mode="json") | {"evidence": _evidence(current)}
    if as_json:
        print(json.dumps(record, indent=2))
        return
    _print_decisions(f"{task}: current decision", [current])
    console.print_json(json.dumps(record["evidence"]))


@route_app.command("history")
def route_history(task: str, as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Every decision about TASK in the order it was made (refusals included)."""
    from services.controller.store import read_history

    common, _, codec = _context()
    history = asyncio.run(read_history(common.kafka, codec, common.topic_namespace, task))
    if as_json:
        print(json.dumps([d.model_dump(mode="json") | {"evidence": _evidence(d)} for d in history], indent=2))
        return
    if not history:
        console.print(f"{task}: no decisions yet")
        return
    _print_decisions(f"{task}: routing history", history)


@route_app.command("set")
def route_set(
    task: str,
    mode: str = typer.Option(..., "--mode", help="frontier, shadow or small"),
    model: Optional[str] = typer.Option(None, "--model", help="the model version (small and shadow)"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="confidence threshold in [0, 1] (small)"),
    reason: str = typer.Option("", "--reason", help="why: required, kept in the history"),
) -> None:
    """A person's override of TASK's routing, audited with the user's name."""
    from services.controller.control import Effects, OverrideRefused, override
    from services.controller.store import publish

    common, settings, codec = _context()
    if not reason.strip():  # refuse before touching Kafka
        console.print('[red]refused:[/red] a reason is required (--reason "…"): every routing decision is audited')
        raise typer.Exit(2)

    async def run() -> RoutingDecision:
        controller = await _load(common, settings, codec)
        current = controller.current(task)
        version = model or (current.model_version if current and mode == "shadow" else None)
        decision = override(task, mode, reason, _user(), current, model_version=model, threshold=threshold,
                            model=controller.models.get((task, version or "")),
                            stats=controller.stats.get((task, version or "")))
        await publish(common.kafka, codec, common.topic_namespace, Effects(decisions=[decision]))
        return decision

    try:
        decision = asyncio.run(run())
    except OverrideRefused as exc:
        console.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(2)
    _print_decisions(f"{task}: decided", [decision])


def gate(task: str,
         version: Optional[str] = typer.Option(None, "--version",
                                               help="the model version (default: the latest registered)"),
         as_json: bool = typer.Option(False, "--json", help="print the evidence as JSON")) -> None:
    """Evaluate TASK's gates now from the latest registration and shadow statistics (decides nothing)."""
    common, settings, codec = _context()
    controller = asyncio.run(_load(common, settings, codec))
    current = controller.current(task)
    candidate = controller.models.get((task, version)) if version else controller.latest_model(task)
    if candidate is None:
        console.print(f"[red]{task}: no registered model{' ' + version if version else ''}[/red]")
        raise typer.Exit(1)
    offline = controller.offline(candidate)
    shadowed = current.model_version if current and current.mode == "shadow" and not version else candidate.version
    shadow = controller.shadow(task, shadowed) if shadowed else None
    report = {"task": task, "current": current.model_dump(mode="json") if current else None,
              "offline": offline.as_evidence() | {"reason": offline.reason},
              "shadow": shadow.as_evidence() | {"reason": shadow.reason} if shadow else None}
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    mode = f"{current.mode} ({current.model_version or '-'})" if current else "frontier (no decision)"
    console.print(f"[bold]{task}[/bold] now: {mode}")
    for result in (offline, shadow):
        if result is None:
            console.print(f"shadow gate: no statistics from the judge for {shadowed} yet")
            continue
        table = Table(title=f"{result.gate} gate for {result.version}: {result.verdict}", show_lines=True)
        for col in ("check", "status", "detail"):
            table.add_column(col, overflow="fold")
        for c in result.checks:
            colour = {"pass": "green", "fail": "red", "pending": "yellow"}.get(c.status, "white")
            table.add_row(c.name, f"[{colour}]{c.status}[/{colour}]", escape(c.detail))
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("approve")(approve)
    app.command("gate")(gate)
    app.add_typer(route_app, name="route")
