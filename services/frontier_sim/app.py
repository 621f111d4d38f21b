"""The simulator's HTTP face: OpenAI-compatible chat completions and models, health, and its own
stats and report. Routes decode, call the Simulator, and encode; every response carries the
header X-Frontier-Simulator: true so nothing downstream can mistake it for a real model.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.common.settings import CommonSettings, load_settings
from services.common.tasks import TaskRegistry, load_tasks
from services.frontier_sim.settings import SimSettings
from services.frontier_sim.simulator import Completion, SimError, Simulator, build_simulator

log = logging.getLogger("graduate.frontier_sim")
SIMULATOR_HEADER = (b"x-frontier-simulator", b"true")
GARBAGE = b'{"id": "chatcmpl-sim", "object": "chat.completion", "choices": [{"index": 0, "mess'


class ChatRequest(BaseModel):
    """The part of an OpenAI chat request the simulator reads; other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    metadata: dict[str, Any] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def get_simulator(request: Request) -> Simulator:
    return request.app.state.simulator


SimDep = Annotated[Simulator, Depends(get_simulator)]
router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, sim: SimDep,
                           x_graduate_task: Annotated[str | None, Header()] = None,
                           x_sim_fault: Annotated[str | None, Header()] = None) -> Response:
    chat = sim.read_request(body.messages, x_graduate_task, body.metadata)
    fault = sim.draw_fault(x_sim_fault)
    if fault == "429":
        return error_response(SimError(429, "Rate limit reached (simulated fault)", kind="rate_limit_error",
                                       code="rate_limit_exceeded"), headers={"Retry-After": "1"})
    await asyncio.sleep(sim.draw_latency_s(chat))
    if fault == "500":
        return error_response(SimError(500, "The server had an error processing your request (simulated fault)",
                                       kind="server_error"))
    if fault == "garbage":
        return Response(GARBAGE, media_type="application/json")
    if fault == "timeout":
        await asyncio.sleep(sim.settings.fault_timeout_s)
    completion = sim.answer(chat, body.max_completion_tokens or body.max_tokens)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(stream_chunks(completion, sim.settings.model_name, include_usage),
                                 media_type="text/event-stream")
    return JSONResponse(completion_body(completion, sim.settings.model_name))


@router.get("/v1/models")
async def models(sim: SimDep) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": sim.settings.model_name, "object": "model", "created": 0,
                                        "owned_by": "graduate (simulator)"}]}


@router.get("/healthz")
async def healthz(sim: SimDep) -> dict[str, Any]:
    return {"status": "ok", "simulator": True, "model": sim.settings.model_name, "tasks": sorted(sim.tasks.tasks)}


@router.get("/v1/sim/stats")
async def stats(sim: SimDep) -> dict[str, Any]:
    return sim.stats()


@router.get("/v1/sim/report", response_class=PlainTextResponse)
async def report(sim: SimDep) -> str:
    return sim.report()


def usage_of(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def completion_body(c: Completion, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": model, "system_fingerprint": "graduate-frontier-sim",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.content, "refusal": None},
                     "logprobs": None, "finish_reason": c.finish_reason}],
        "usage": usage_of(c),
    }


async def stream_chunks(c: Completion, model: str, include_usage: bool) -> AsyncIterator[str]:
    """The answer as server-sent events: one content chunk, the finish reason, usage if asked."""
    head = {"id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model, "system_fingerprint": "graduate-frontier-sim"}
    chunks = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": c.content},
                              "logprobs": None, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}]},
    ]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": usage_of(c)})
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def error_response(exc: SimError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def on_sim_error(request: Request, exc: SimError) -> JSONResponse:
    return error_response(exc)


async def on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """OpenAI answers a malformed request with 400 and a message naming the field."""
    sim = get_simulator(request)
    sim.tally.requests += 1
    sim.tally.errors["bad_request"] += 1
    problems = [("body" if e["type"] == "json_invalid" else ".".join(str(p) for p in e["loc"][1:]) or "body",
                 e["msg"]) for e in exc.errors()]
    message = "; ".join(f"{where}: {msg}" for where, msg in problems)
    return error_response(SimError(400, message, param=problems[0][0] if problems else None))


class SimulatorHeader:
    """Pure ASGI middleware: X-Frontier-Simulator: true on every response, errors included."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_marked(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), SIMULATOR_HEADER]}
            await send(message)

        await self.app(scope, receive, send_marked)


def create_app(settings: SimSettings, tasks: TaskRegistry | None = None) -> FastAPI:
    """The simulator app; the oracle is precomputed here, before the server listens."""
    if tasks is None:
        tasks = load_tasks(load_settings(CommonSettings).tasks_file)
    simulator = build_simulator(settings, tasks)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings
        log.warning("SIMULATED frontier model, not a real LLM: %s answers %s from %s at a configured accuracy "
                    "of %.1f %% (latency %g-%g ms%s, malformed %.2f %%, seed %d)", s.model_name,
                    ", ".join(sorted(simulator.oracles)), s.data_dir, 100 * s.accuracy, s.latency_min_ms,
                    s.latency_max_ms, " per input" if s.latency_per_input else "", 100 * s.malformed_rate, s.seed)
        yield

    app = FastAPI(title="graduate frontier simulator (SIMULATED, not a real LLM)", lifespan=lifespan)
    app.state.simulator = simulator
    app.include_router(router)
    app.add_exception_handler(SimError, on_sim_error)
    app.add_exception_handler(RequestValidationError, on_invalid_request)
    app.add_middleware(SimulatorHeader)
    return app
