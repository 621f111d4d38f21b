"""`graduate review serve`: the review page (also `graduate serve review`, beside the router)."""
from __future__ import annotations

import logging
from typing import Optional

import typer

review_app = typer.Typer(help="The review page: people fix labels where it matters.", no_args_is_help=True)


@review_app.command("serve")
def serve_review(
    host: Optional[str] = typer.Option(None, help="bind address [GRADUATE_REVIEW_HOST, 127.0.0.1]"),
    port: Optional[int] = typer.Option(None, help="port [GRADUATE_REVIEW_PORT, 8070]"),
    log_level: str = typer.Option("info", help="log level"),
    access_log: bool = typer.Option(False, help="log every request"),
) -> None:
    """Serve the review page: the review queue per task, the task pages, reviewer keys only."""
    import uvicorn

    from services.common.settings import load_settings
    from services.review.app import create_app
    from services.review.settings import ReviewSettings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = load_settings(ReviewSettings, **overrides)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level,
                access_log=access_log, timeout_graceful_shutdown=5)


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
    try:
        from services.router.cli import serve_app
    except ModuleNotFoundError:
        return
    serve_app.command("review")(serve_review)
