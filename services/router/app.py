"""The router app: `create_app(settings)` wires the frontier client, Triton, capture, the routing
follower and the keys once (the bootstrap); tests pass fakes for the outside world instead.

Closed by default: every /v1 route needs a key, /openapi.json too (GRADUATE_ROUTER_DOCS=key; /docs
and /redoc only with `open`), and /metrics is not on this app at all but on `app.state.metrics_app`,
which `serve_router` serves on its own port (GRADUATE_ROUTER_METRICS_HOST/PORT)."""
from __future__ import annotations

import asyncio
import json
import logging
import re
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app

from services.capture.client import CaptureClient, CaptureStats
from services.common.codec import Codec
from services.common.contracts import new_id
from services.common.frontier import FrontierClient
from services.common.tasks import TaskRegistry, load_tasks
from services.common.triton import SmallModelClient
from services.router.deps import CallerDep, RouterState
from services.router.errors import HANDLERS
from services.router.fast import FastPath, is_hot
from services.router.keys import KeyStore
from services.router.logic import Capture, Frontier, Ports, SmallModel, dead_letters
from services.router.metrics import UNKNOWN_TASK, RouterMetrics
from services.router.openapi import router_openapi
from services.router.routes import router
from services.router.routing import RoutingFollower, RoutingTable
from services.router.settings import RouterSettings, load_router_settings

log = logging.getLogger("graduate.router")
CALL_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
SAMPLE_DRAIN_S = 5.0


class NullCapture:
    """Capture switched off (GRADUATE_ROUTER_CAPTURE_ENABLED=false): benchmarks and experiments only."""

    def record_call(self, call=None, /, **fields: Any) -> str:
        return call.call_id if call is not None else fields.get("call_id", "")

    def defer_call(self, call_id: str, build) -> bool:
        return True

    def publish(self, spec, key, value, *, dedupe: bool = False) -> bool:
        return True

    def stats(self) -> CaptureStats:
        return CaptureStats(state="disabled")


class GraduateHeaders:
    """Pure ASGI middleware: a call id per request, X-Graduate-Call-Id / X-Graduate-Served-By on every
    response, graduate_router_requests_total for every /v1 response, and a JSON 500 for the unexpected."""

    def __init__(self, app, metrics_of) -> None:
        self.app = app
        self.metrics_of = metrics_of

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-graduate-call-id"), "")
        call_id = incoming if CALL_ID.fullmatch(incoming) else new_id()
        state = scope.setdefault("state", {})
        state.update(call_id=call_id, served_by="none", task_label=UNKNOWN_TASK)
        started = False

        async def send_marked(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-graduate-call-id", call_id.encode()),
                                                  (b"x-graduate-served-by", state["served_by"].encode())]}
                if scope["path"].startswith("/v1/"):
                    metrics = self.metrics_of()
                    if metrics is not None:
                        metrics.child(metrics.requests, state["task_label"], state["served_by"],
                                      str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_marked)
        except Exception as exc:
            log.exception("unexpected error serving %s %s (call %s)", scope.get("method"), scope["path"], call_id)
            if started:
                raise
            body = json.dumps({"error": {"message": f"internal error ({type(exc).__name__}); the router log has "
                                                    "the details", "type": "api_error", "param": None,
                                         "code": "internal_error"}, "call_id": call_id}).encode()
            await send_marked({"type": "http.response.start", "status": 500,
                               "headers": [(b"content-type", b"application/json"),
                                           (b"content-length", str(len(body)).encode())]})
            await send_marked({"type": "http.response.body", "body": body})


class RouterApp(FastAPI):
    """FastAPI, with the hot endpoints (`fast.is_hot`) served in front of it once the lifespan has
    wired the router: `GraduateHeaders(FastPath)` and nothing else on their path (no FastAPI
    telemetry or Starlette middleware stack). Everything else, and the hot endpoints before the
    lifespan ran, goes through FastAPI, with GraduateHeaders as its outermost user middleware."""

    front: Any = None

    async def __call__(self, scope, receive, send) -> None:
        if self.front is not None and is_hot(scope):
            scope["app"] = self
            return await self.front(scope, receive, send)
        await super().__call__(scope, receive, send)


def create_app(settings: RouterSettings | None = None, *, tasks: TaskRegistry | None = None,
               frontier: Frontier | None = None, small: SmallModel | None = None, capture: Capture | None = None,
               follow_routing: bool = True) -> RouterApp:
    """The router. Anything not passed is built from settings in the lifespan (and closed there)."""
    settings = settings or load_router_settings()
    tasks = tasks or load_tasks(settings.common.tasks_file)
    metrics = RouterMetrics()
    table = RoutingTable(tasks, on_change=metrics.set_mode)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with AsyncExitStack() as stack:
            state = await bootstrap(app, stack)
            yield
            await drain_samples(state.ports)

    async def bootstrap(app: FastAPI, stack: AsyncExitStack) -> RouterState:
        f = frontier
        if f is None:
            f = FrontierClient(settings.frontier)
            stack.push_async_callback(f.aclose)
        s = small
        if s is None:
            s = SmallModelClient(settings.common.triton_grpc_url, settings.triton_timeout_s)
            stack.push_async_callback(s.close)
        c = capture
        if c is None and settings.capture_enabled:
            c = CaptureClient(settings.common.kafka, name=settings.capture_name,
                              namespace=settings.common.topic_namespace, settings=settings.capture,
                              var_dir=settings.common.var_dir, codec=Codec(settings.common.schema_registry_url))
            await c.astart()
            stack.push_async_callback(c.astop)
        elif c is None:
            log.warning("capture is OFF (GRADUATE_ROUTER_CAPTURE_ENABLED=false): frontier answers are not captured")
            c = NullCapture()
        metrics.bind_capture(c.stats)
        keys = None
        if settings.auth_disabled:
            log.warning("API keys are OFF (GRADUATE_ROUTER_AUTH_DISABLED=true): anyone who reaches %s:%d may call",
                        settings.host, settings.port)
        else:
            keys = KeyStore(settings.keys_file, settings.keys_check_s)
            if not len(keys):
                log.warning("no API keys in %s: every request will be refused; create one with "
                            "`graduate keys create NAME`", settings.keys_file)
        ports = Ports(frontier=f, small=s, capture=c, metrics=metrics, provider=settings.frontier.provider,
                      default_model=settings.frontier.model, sample_rate=settings.small_sample_rate,
                      sample_max_in_flight=settings.sample_max_in_flight)
        if follow_routing:
            follower = RoutingFollower(settings.common.kafka, settings.common.topic_namespace,
                                       Codec(settings.common.schema_registry_url), table,
                                       dead_letters=dead_letters(c), retry_s=settings.routing_retry_s)
            follow = asyncio.get_running_loop().create_task(follower.run(), name="routing-follower")
            stack.push_async_callback(cancel, follow)
            is_ready, reason = follower.ready.is_set, lambda: follower.not_ready_reason
        else:
            is_ready, reason = (lambda: True), (lambda: "")
        state = RouterState(settings=settings, tasks=tasks, table=table, ports=ports, keys=keys,
                            is_ready=is_ready, not_ready_reason=reason)
        app.state.router = state
        app.front = GraduateHeaders(FastPath(lambda: state), metrics_of=lambda: metrics)
        stack.callback(setattr, app, "front", None)
        log.info("router: %d task(s), frontier %s, Triton %s, topics namespace %r", len(tasks.tasks),
                 settings.frontier.base_url, settings.common.triton_grpc_url, settings.common.topic_namespace)
        return state

    open_docs = settings.docs == "open"
    app = RouterApp(title="graduate router", version="1", lifespan=lifespan,
                  description="OpenAI-compatible chat completions that graduate hot, narrow calls to a small model.",
                  openapi_url="/openapi.json" if open_docs else None, docs_url="/docs" if open_docs else None,
                  redoc_url="/redoc" if open_docs else None)
    app.include_router(router)
    app.openapi = lambda: router_openapi(app)  # type: ignore[method-assign]
    if settings.docs == "key":
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_behind_key(caller: CallerDep) -> JSONResponse:  # noqa: ARG001
            return JSONResponse(app.openapi())
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
    app.add_middleware(GraduateHeaders, metrics_of=lambda: metrics)  # every response, fast or not
    app.state.metrics = metrics
    app.state.metrics_app = make_asgi_app(metrics.registry)  # served on its own port (serve_router)
    app.state.table = table
    return app


async def cancel(task: asyncio.Task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def drain_samples(ports: Ports) -> None:
    """Let in-flight sampled frontier calls finish (bounded) so their captures are not lost at shutdown."""
    if ports.background:
        done, pending = await asyncio.wait(list(ports.background), timeout=SAMPLE_DRAIN_S)
        for t in pending:
            t.cancel()
