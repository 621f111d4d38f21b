"""The review page's app: `create_app(settings)` wires the view, the topic follower, the publisher
and the keys once (the bootstrap); tests pass a view and a publisher of their own instead."""
from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Optional
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from services.common.codec import Codec
from services.common.tasks import TaskRegistry, load_tasks
from services.review.auth import AuthError, Sessions
from services.review.deps import PageError, ReviewState
from services.review.logic import Publisher
from services.review.routes import api, pages, render
from services.review.settings import ReviewSettings
from services.review.topics import KafkaPublisher, TopicFollower
from services.review.view import ReviewView
from services.review.web import STATIC_DIR, SecurityHeaders, wants_json
from services.router.keys import KeyStore

log = logging.getLogger("graduate.review")


def make_view(settings: ReviewSettings) -> ReviewView:
    return ReviewView(settings.curator.holdout_fraction, recent_disagreements=settings.recent_disagreements,
                      history_kept=settings.history_kept, stats_points=settings.stats_points,
                      outcome_bucket_s=settings.outcome_bucket_s, refresh_s=settings.queue_refresh_s)


def create_app(settings: Optional[ReviewSettings] = None, *, tasks: Optional[TaskRegistry] = None,
               view: Optional[ReviewView] = None, publisher: Optional[Publisher] = None,
               follow: bool = True) -> FastAPI:
    """The review page. Without `publisher` it produces to Kafka; with `follow` it replays and
    follows the topics into the view (tests of the pages alone pass follow=False)."""
    settings = settings or ReviewSettings()
    tasks = tasks or load_tasks(settings.common.tasks_file)
    view = view or make_view(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with AsyncExitStack() as stack:
            await bootstrap(app, stack)
            yield

    async def bootstrap(app: FastAPI, stack: AsyncExitStack) -> None:
        codec = Codec(settings.common.schema_registry_url)
        namespace = settings.common.topic_namespace
        p = publisher
        if p is None:
            p = KafkaPublisher(settings.common.kafka, namespace, codec)
            await p.start()
            stack.push_async_callback(p.stop)
        if follow:
            follower = TopicFollower(settings.common.kafka, namespace, codec, view, retry_s=settings.retry_s)
            running = asyncio.get_running_loop().create_task(follower.run(), name="review-follower")
            stack.push_async_callback(cancel, running)
            is_ready = follower.ready.is_set

            def status() -> dict:
                return {"status": follower.status, "records": follower.records,
                        "undecodable": follower.undecodable, "missing_topics": sorted(follower.missing)}
        else:
            is_ready = lambda: True  # noqa: E731

            def status() -> dict:
                return {"status": "not following (tests)", "records": 0, "undecodable": 0, "missing_topics": []}
        keys = KeyStore(settings.keys_file)
        if not len(keys):
            log.warning("no API keys in %s: nobody can sign in; create one with "
                        "`graduate keys create NAME --role reviewer`", settings.keys_file)
        app.state.review = ReviewState(settings=settings, tasks=tasks, view=view, publisher=p, keys=keys,
                                       sessions=Sessions(settings.session_ttl_s), is_ready=is_ready,
                                       follower_status=status)
        log.info("review page: %d task(s), keys %s, topics namespace %r", len(tasks.tasks), settings.keys_file,
                 namespace)

    app = FastAPI(title="graduate review", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(pages)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError):
        if wants_json(request):
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
        if exc.status == 401:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return error_page(request, exc.status, str(exc))

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError):
        if wants_json(request):
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return error_page(request, exc.status, str(exc))

    return app


def error_page(request: Request, status: int, message: str):
    return render(request, "error.html", request.app.state.review, None, status=status, message=message)


async def cancel(task: asyncio.Task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
