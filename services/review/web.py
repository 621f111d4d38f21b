"""Templates (Jinja2, autoescape on for everything), their filters, and the security headers.

Every text on the page comes from people or models (inputs are user text), so nothing is ever
marked safe: the templates write values only through autoescaped expressions, and the CSP
forbids inline and foreign scripts on top of that.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from fastapi import Request
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
VERDICT_TEXT = {"label": "label", "not_in_label_set": "not in the label set", "skip": "skipped"}


def fmt_ts(ts: Optional[datetime]) -> str:
    if ts is None:
        return "-"
    ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def fmt_conf(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}"


def pretty_json(text: Optional[str]) -> str:
    try:
        return json.dumps(json.loads(text or "{}"), indent=2, sort_keys=True)
    except json.JSONDecodeError:
        return text or ""


def review_text(review: Any) -> str:
    if review is None:
        return "-"
    return review.label if review.verdict == "label" else VERDICT_TEXT[review.verdict]


def make_templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ts=fmt_ts, pct=fmt_pct, conf=fmt_conf, pretty_json=pretty_json, review_text=review_text)
    env.globals["verdict_text"] = VERDICT_TEXT
    return Jinja2Templates(env=env)


class SecurityHeaders:
    """Pure ASGI middleware: CSP and friends on every response; pages are never cached."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []),
                           *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path in ("/healthz", "/readyz")
