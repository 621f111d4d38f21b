"""`graduate candidates`: which tasks to graduate, ranked, with the reason for each trait."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _money(v: Optional[float]) -> str:
    return "-" if v is None else f"${v:,.0f}"


def print_candidates(candidates, assumptions: str) -> None:
    table = Table(title="graduation candidates (from captured calls)")
    for col in ("#", "task", "recommendation", "score", "calls/day", "saving/month", "break-even calls/day",
                "p50 gain", "failing"):
        table.add_column(col, overflow="fold")
    for i, c in enumerate(candidates, 1):
        e = c.economics
        rec = "[green]graduate[/green]" if c.recommendation == "graduate" else "[yellow]stay on frontier[/yellow]"
        table.add_row(str(i), c.task, rec, f"{c.score:.2f}", f"{c.measures.calls_per_day:,.0f}",
                      _money(e.monthly_saving_usd),
                      "-" if e.break_even_calls_per_day is None else f"{e.break_even_calls_per_day:,.0f}",
                      "-" if e.latency_gain_ms is None else f"{e.latency_gain_ms:,.0f} ms", ", ".join(c.failing) or "-")
    console.print(table)
    for c in candidates:
        console.print(f"[bold]{c.task}[/bold]")
        m = c.measures
        shape = (f", {m.conform_rate or 0:.1%} JSON with the {len(m.known_fields)} known fields"
                 if m.kind == "extraction" else "")
        console.print(f"  {m.calls:,} captured calls, {m.distinct_outputs}{'+' if m.distinct_lower_bound else ''} distinct "
                      f"outputs{shape}, p50/p95 {m.latency_p50_ms or 0:,.0f}/{m.latency_p95_ms or 0:,.0f} ms, "
                      f"${m.cost_per_call_usd:.5f}/call, {m.usable_examples:,} usable examples")
        for t in c.traits:
            mark = "[green]✓[/green]" if t.passed else "[red]✗[/red]"
            console.print(f"  {mark} {t.name}: {t.reason}")
    console.print(f"[dim]assumptions: {assumptions}[/dim]")


def register(app: typer.Typer) -> None:
    @app.command("candidates")
    def candidates(json_file: Optional[Path] = typer.Option(None, "--json", help="also write the ranking as JSON here")) -> None:
        """Rank the tasks by how well they fit a small model, with saving, break-even and latency gain."""
        from services.common.settings import CommonSettings, load_settings
        from services.profiler.report import compute_candidates
        from services.profiler.settings import ProfilerSettings

        common, profiler = load_settings(CommonSettings), load_settings(ProfilerSettings)
        ranked = asyncio.run(compute_candidates(common, profiler))
        if not ranked:
            console.print("no captured calls yet: nothing to rank")
        else:
            print_candidates(ranked, ranked[0].economics.assumptions)
        if json_file is not None:
            json_file.write_text(json.dumps([c.as_dict() for c in ranked], indent=2) + "\n")
