"""`graduate demo`: the graduation loop on a scenario (what `make demo` runs after its set-up)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo() -> None:
        """Start the product, send traffic, review, approve, narrate; settings: GRADUATE_DEMO_* (SCENARIO)."""
        from services.demo.loop import main

        main()
