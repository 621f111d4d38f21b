"""`graduate demo`: the whole graduation loop on Banking77 (what `make demo` runs after its set-up)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo() -> None:
        """Run the demo against this machine's Kafka and Triton (started if absent); settings: GRADUATE_DEMO_*."""
        from services.demo.run import main

        main()
