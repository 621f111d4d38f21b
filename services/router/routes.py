"""The router's HTTP endpoints: decode, call one function of `logic`, encode."""
from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.router.deps import CallerDep, RouterState, ServiceCallerDep, StateDep, resolve_task
from services.router.errors import ApiError
from services.router.keys import ApiKey
from services.router.logic import Relay, TaskCall, predict_payload, proxy, route
from services.router.metrics import NO_TASK
from services.router.openapi import COMPLETION, KEYED, TASK_CALL, errors
from services.router.schemas import ChatRequest, PredictRequest, read_json, validate
from services.router.wire import completion_body, relay_events, sse_events

router = APIRouter()


@router.post("/v1/chat/completions", responses={**COMPLETION, **TASK_CALL})
async def chat_completions(request: Request, state: StateDep, caller: ServiceCallerDep,
                           x_graduate_task: Annotated[str | None, Header(
                               description="the task this call is (or metadata.task); without one the request "
                                           "is proxied to the frontier and not captured")] = None) -> Response:
    """Served by `fast.FastPath` in the running router (this route documents it and is the same code)."""
    return await serve_chat(request, state, caller, x_graduate_task)


@router.post("/v1/tasks/{task}/predict", responses=TASK_CALL)
async def predict(task: str, request: Request, state: StateDep, caller: ServiceCallerDep) -> Response:
    """Served by `fast.FastPath` in the running router (this route documents it and is the same code)."""
    return await serve_predict(request, state, caller, task)


async def serve_chat(request: Request, state: RouterState, caller: ApiKey, x_graduate_task: str | None) -> Response:
    chat = validate(ChatRequest, await read_json(request, state.settings.body_limit))
    name = x_graduate_task or (chat.metadata or {}).get("task")
    payload = chat.upstream_payload(state.settings.frontier.model)
    if not name:
        request.state.task_label = NO_TASK
        answer = await proxy(payload, upstream_headers(request, state, None), state.ports, stream=chat.stream)
        request.state.served_by = "frontier"
        return relayed(request, answer, chat) if isinstance(answer, Relay) else respond(answer.body, chat)
    task = resolve_task(state, request, caller, str(name))
    try:
        text = task.extract_input([m.model_dump() for m in chat.messages])
    except ValueError as exc:
        raise ApiError(422, "invalid_input", str(exc), param="messages") from None
    call = task_call(request, state, caller.name, task, text, payload, chat.metadata)
    served = await serve(request, state, call, stream=chat.stream)
    return relayed(request, served, chat) if isinstance(served, Relay) else respond(completion_body(served), chat)


async def serve_predict(request: Request, state: RouterState, caller: ApiKey, task: str) -> Response:
    spec = resolve_task(state, request, caller, task)
    body = validate(PredictRequest, await read_json(request, state.settings.body_limit))
    payload = predict_payload(spec, body.input, state.settings.frontier.model)
    call = task_call(request, state, caller.name, spec, body.input, payload, {"tenant": body.tenant})
    served = await serve(request, state, call)
    return JSONBody({"output": served.output, "served_by": served.served_by, "confidence": served.confidence,
                         "model_version": served.model_version, "call_id": served.call_id,
                         "latency_ms": round(served.latency_ms, 3)})


@router.get("/v1/tasks", responses=KEYED)
async def list_tasks(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    return {"ready": state.is_ready(), "tasks": state.table.describe()}


@router.get("/v1/models", responses=KEYED)
async def list_models(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """The tasks this key may call, as OpenAI lists models (a task is named by X-Graduate-Task)."""
    return {"object": "list", "data": [model_card(name) for name in sorted(state.tasks.tasks) if caller.may_use(name)]}


@router.get("/v1/models/{model}", responses={**KEYED, **errors(404)})
async def get_model(model: str, state: StateDep, caller: CallerDep) -> dict[str, Any]:
    if model not in state.tasks.tasks or not caller.may_use(model):
        raise ApiError(404, "model_not_found", f"the model {model!r} does not exist or this key may not use it",
                       param="model")
    return model_card(model)


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "graduate"}


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready yet (the reason is in the body)"}})
async def readyz(state: StateDep) -> JSONResponse:
    capture = state.ports.capture.stats()
    body = {"ready": state.is_ready(), "reason": None if state.is_ready() else state.not_ready_reason(),
            "capture": {"state": capture.state, "spool_records": capture.spool_records}}
    return JSONResponse(body, status_code=200 if state.is_ready() else 503)


# -- helpers -----------------------------------------------------------------------------------
async def serve(request: Request, state: RouterState, call: TaskCall, stream: bool = False):
    """Route the call; X-Graduate-Served-By says who answered (it stays `none` when nothing did)."""
    served = await route(call, state.table.get(call.task.name), state.ports, stream=stream)
    request.state.served_by = served.served_by
    return served


def task_call(request: Request, state: RouterState, caller: str, task, text: str, payload: dict[str, Any],
              metadata: dict[str, Any] | None) -> TaskCall:
    found = header_values(request, (TENANT, *TRACE_HEADERS, *state.settings.forward_headers))
    tenant = found.get(TENANT) or (metadata or {}).get("tenant") or caller
    trace = {"caller": caller, "router": state.settings.capture_name}
    trace.update((h, found[h]) for h in TRACE_HEADERS if h in found)
    headers = {h: found[h] for h in state.settings.forward_headers if h in found}
    headers["X-Graduate-Task"] = task.name  # lets a task-aware upstream (the simulator, a gateway) route it
    return TaskCall(call_id=request.state.call_id, task=task, input=text, payload=payload, tenant=str(tenant),
                    headers=headers, trace=trace)


TENANT = "x-graduate-tenant"
TRACE_HEADERS = ("traceparent", "tracestate")


def header_values(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """The first value of each of `names` (lower case) the request carries, from one pass over its headers."""
    wanted = {n.encode("latin-1") for n in names}
    found: dict[str, str] = {}
    for key, value in request.scope["headers"]:
        if key in wanted:
            name = key.decode("latin-1")
            if name not in found:
                found[name] = value.decode("latin-1")
    return found


def upstream_headers(request: Request, state: RouterState, task: str | None) -> dict[str, str]:
    headers = {h: request.headers[h] for h in state.settings.forward_headers if h in request.headers}
    if task:
        headers["X-Graduate-Task"] = task  # lets a task-aware upstream (the simulator, a gateway) route it
    return headers


class JSONBody(JSONResponse):
    """A 200 JSON answer with its two headers and nothing else to work out (the hot endpoints'
    answers; GraduateHeaders adds the graduate headers)."""

    def __init__(self, content: Any) -> None:
        self.status_code, self.background = 200, None
        self.body = self.render(content)
        self.raw_headers = [(b"content-length", str(len(self.body)).encode()), (b"content-type", b"application/json")]

    def render(self, content: Any) -> bytes:
        return _ENCODE(content).encode("utf-8")  # as JSONResponse renders, with one encoder made once


_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class RelayResponse(StreamingResponse):
    """The relayed stream; the upstream stream is closed however the response ends, also when the
    caller left before it began (Starlette then never starts the body iterator)."""

    def __init__(self, relay: Relay, call_id: str, include_usage: bool) -> None:
        super().__init__(relay_events(relay, call_id, include_usage), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})
        self.relay = relay

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.relay.aclose()


def relayed(request: Request, relay: Relay, chat: ChatRequest) -> StreamingResponse:
    return RelayResponse(relay, request.state.call_id, bool((chat.stream_options or {}).get("include_usage")))


def respond(completion: dict[str, Any], chat: ChatRequest) -> Response:
    if not chat.stream:
        return JSONBody(completion)
    include_usage = bool((chat.stream_options or {}).get("include_usage"))
    events = sse_events(completion, include_usage)

    async def stream():
        for event in events:
            yield event
    return StreamingResponse(stream(), media_type="text/event-stream")

